"""How a reader's splits become the :class:`DataBundle` a run needs.

Which split does what: self-supervised training uses the training split. Clustering is scored on the set the
paper's Table 12 counts: train + test for CIFAR (60,000) and STL-10 (13,000); the training images only for
the ImageNet subsets (13,000 / 19,500), TinyImageNet (100,000) and ImageNet-1k; the long-tailed training
split alone for the LT sets (so the clustered set has the stated imbalance ratio 10). Probes fit on the
training split and score on the test / validation split (a seeded stratified hold-out where there is none).
Probe splits are row subsets of ``evaluate`` where possible, so evaluation embeds every image once.
"""

from __future__ import annotations

import numpy as np

from nrcc_scale.data.base import ConcatSource, DataBundle, ImageSource, SubsetSource, stratified_holdout


def holdout_bundle(source: ImageSource, fraction: float, seed: int) -> DataBundle:
    """For sets without a test split: train and fit probes on a stratified share, score probes on the
    held-out rest, and cluster the whole set (as the paper clusters train + test)."""
    keep, held = stratified_holdout(source.labels, fraction, seed)
    train = SubsetSource(source, keep, name=f"{source.name}[train]")
    test = SubsetSource(source, held, name=f"{source.name}[holdout]")
    return DataBundle(train=train, evaluate=source, probe_train=train, probe_test=test)


def train_test_bundle(train: ImageSource, test: ImageSource, name: str) -> DataBundle:
    """Train on ``train``, cluster train + test, probes on the two parts (row subsets of ``evaluate``)."""
    evaluate = ConcatSource([train, test], name=f"{name}[train+test]")
    n = len(train)
    return DataBundle(train=train, evaluate=evaluate,
                      probe_train=SubsetSource(evaluate, np.arange(n), name=f"{name}[train]"),
                      probe_test=SubsetSource(evaluate, np.arange(n, n + len(test)), name=f"{name}[test]"))


def train_only_bundle(train: ImageSource, test: ImageSource | None, name: str, holdout_fraction: float,
                      seed: int) -> DataBundle:
    """Train and cluster on ``train`` (the paper's ImageNet subsets, TinyImageNet, the LT sets); probes
    score on ``test`` when there is one, else on a seeded stratified hold-out of ``train``."""
    if test is not None:
        probe_train: ImageSource = SubsetSource(train, np.arange(len(train)), name=f"{name}[train]")
        return DataBundle(train=train, evaluate=train, probe_train=probe_train, probe_test=test)
    keep, held = stratified_holdout(train.labels, holdout_fraction, seed)
    return DataBundle(train=train, evaluate=train,
                      probe_train=SubsetSource(train, keep, name=f"{name}[probe-train]"),
                      probe_test=SubsetSource(train, held, name=f"{name}[holdout]"))
