"""The one table of data set names and their builders (``data.dataset`` -> the reader of its on-disk format).

=================  ===================================================================================
``digits``         scikit-learn's bundled 8 x 8 digits (no files; the default run).
``image_folder``   ``data.root`` = a folder of class folders (:mod:`nrcc_scale.data.image_folder`).
``cifar10`` ...    CIFAR python pickles and the long-tailed splits (:mod:`nrcc_scale.data.cifar`).
``stl10``          STL-10 binaries (:mod:`nrcc_scale.data.stl10`).
``imagenet10`` ... ImageNet-1k, its subsets and TinyImageNet (:mod:`nrcc_scale.data.imagenet`).
=================  ===================================================================================

Each module's docstring gives the exact layout it reads; :mod:`nrcc_scale.data.bundles` says which split does
what. Adding a data set = writing its builder and adding one row here. This module imports the readers but
not the run configuration (``DataConfig`` is an annotation only), so ``nrcc_scale.config`` can take the
allowed values of ``data.dataset`` from :func:`dataset_names` without an import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from nrcc_scale.data.base import DataBundle
from nrcc_scale.data.bundles import holdout_bundle
from nrcc_scale.data.cifar import build_cifar, build_cifar_lt
from nrcc_scale.data.digits import load_digits_source
from nrcc_scale.data.image_folder import build_image_folder
from nrcc_scale.data.imagenet import build_imagenet1k, build_imagenet10, build_imagenet_dogs, build_tinyimagenet
from nrcc_scale.data.stl10 import build_stl10

if TYPE_CHECKING:
    from nrcc_scale.config import DataConfig


def build_digits(cfg: DataConfig, seed: int) -> DataBundle:
    return holdout_bundle(load_digits_source(), cfg.holdout_fraction, seed)


# name -> builder, in the order the names are listed to users (config errors, ``--dataset`` choices)
BUILDERS: dict[str, Callable[[DataConfig, int], DataBundle]] = {
    "digits": build_digits,
    "image_folder": build_image_folder,
    "cifar10": build_cifar,
    "cifar100": build_cifar,
    "cifar20": build_cifar,
    "cifar10_lt": build_cifar_lt,
    "cifar20_lt": build_cifar_lt,
    "stl10": build_stl10,
    "imagenet10": build_imagenet10,
    "imagenet_dogs": build_imagenet_dogs,
    "tinyimagenet": build_tinyimagenet,
    "imagenet1k": build_imagenet1k,
}


def dataset_names() -> tuple[str, ...]:
    """The allowed values of ``data.dataset``, in table order."""
    return tuple(BUILDERS)
