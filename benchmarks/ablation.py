"""The paper's Table 2 ablation, small: does NRCC help, and does SGHMC beat an ordinary third view?

{InfoNCE, BYOL} x {plain, +NRCC with augment negatives ("NRCC w/o SGHMC"), +NRCC with SGHMC negatives}
x {k-means with the true k on the embedding, UMAP + GridShift}, several seeds each, on the bundled default
data set with the default recipe (only method, NRCC switches and seed change). Every run trains in its own
process (two at a time, one thread each), then its target/online encoder's embedding is clustered both ways.

Prints mean +- std of NMI / ACC / ARI / AMI per cell, the paper's ordering (plain < NRCC w/o SGHMC < NRCC)
per base method, and paired differences across seeds (same seed = same initialisation and data order) with
a paired t-test, so the confidence of each comparison is explicit.

    python benchmarks/ablation.py --quick            # 2 seeds, 4 epochs: a smoke run of the machinery
    python benchmarks/ablation.py --seeds 3 --json ablation.json
"""

from __future__ import annotations

import itertools
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import _common
import numpy as np

VARIANTS = {
    "plain": ["method.nrcc.enabled=false"],
    "NRCC w/o SGHMC": ["method.nrcc.enabled=true", "method.nrcc.negatives=augment"],
    "NRCC (SGHMC)": ["method.nrcc.enabled=true", "method.nrcc.negatives=sghmc"],
}
METHODS = ("infonce", "byol")
METRICS = ("nmi", "acc", "ari", "ami")


def _add_arguments(parser) -> None:
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=0, help="0 = the default config's epochs")
    parser.add_argument("--parallel", type=int, default=2, help="training processes at a time")
    parser.add_argument("overrides", nargs="*", help="extra key=value for every run")


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one configuration in this process and cluster its embedding two ways."""
    from nrcc_scale.evaluation.pipeline import kmeans_true_k, reduce_and_gridshift

    cfg, data, emb = _common.train_and_embed(job)
    kmeans = kmeans_true_k(emb.features, emb.labels, data.evaluate.num_classes, seed=cfg.train.seed)
    grid = reduce_and_gridshift(emb.features, emb.labels, cfg.eval, "umap+gridshift")
    return {**{k: job[k] for k in ("method", "variant", "seed")},
            "k-means (true k)": {m: kmeans.scores[m] for m in METRICS},
            "UMAP + GridShift": {**{m: grid.scores[m] for m in METRICS},
                                 "num_clusters": grid.scores["num_clusters"]}}


def summarise(results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    from scipy import stats

    rows, notes = [], []
    for clustering in ("k-means (true k)", "UMAP + GridShift"):
        for method in METHODS:
            means = {}
            for variant in VARIANTS:
                cell = [r[clustering] for r in results if r["method"] == method and r["variant"] == variant]
                row = {"clustering": clustering, "method": method, "variant": variant, "runs": len(cell)}
                for m in METRICS:
                    vals = np.array([c[m] for c in cell])
                    row[m] = f"{vals.mean():.3f} +- {vals.std(ddof=1) if len(vals) > 1 else 0:.3f}"
                means[variant] = np.array([[c[m] for m in METRICS] for c in cell])
                rows.append(row)
            order = sorted(VARIANTS, key=lambda v: means[v][:, 0].mean())
            holds = order == list(VARIANTS)
            notes.append(f"{clustering}, {method}: NMI ordering {' < '.join(order)} -> paper's ordering "
                         f"{'holds' if holds else 'does NOT hold'}")
            for a, b in (("plain", "NRCC (SGHMC)"), ("NRCC w/o SGHMC", "NRCC (SGHMC)")):
                diff = means[b][:, 0] - means[a][:, 0]
                p = stats.ttest_rel(means[b][:, 0], means[a][:, 0]).pvalue if len(diff) > 1 else float("nan")
                notes.append(f"    NMI {b} - {a}: {diff.mean():+.3f} (per seed {np.round(diff, 3).tolist()}, "
                             f"paired t-test p = {p:.2g})")
    return rows, notes


def main() -> None:
    args = _common.parse_args(__doc__.splitlines()[0], _add_arguments)
    if args.quick:
        args.seeds, args.epochs = 2, 4
    extra = list(args.overrides) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    with tempfile.TemporaryDirectory() as root:
        jobs = [{"method": m, "variant": v, "seed": s, "root": root, "name": f"{m}_{i}_{s}",
                 "overrides": [f"method.name={m}", *VARIANTS[v], f"train.seed={s}", f"eval.seed={s}",
                               "train.monitor_every=-1", *extra]}
                for (m, (i, v), s) in itertools.product(METHODS, enumerate(VARIANTS), range(args.seeds))]
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with ProcessPoolExecutor(max_workers=args.parallel) as pool:
            results = []
            for result in pool.map(run_one, jobs):
                print(f"  {result['method']:8s} {result['variant']:15s} seed {result['seed']}: "
                      f"UMAP+GridShift NMI {result['UMAP + GridShift']['nmi']:.3f}, "
                      f"k-means NMI {result['k-means (true k)']['nmi']:.3f}", flush=True)
                results.append(result)
    rows, notes = summarise(results)
    _common.print_table(rows)
    print("\n".join(notes))
    if args.json:
        _common.write_json(args.json, {"settings": {k: v for k, v in vars(args).items() if k != "json"},
                                       "runs": results, "table": rows, "notes": notes})


if __name__ == "__main__":
    main()
