"""Clustering metrics: ours (one sparse contingency table, windowed exact EMI) vs scikit-learn.

    python benchmarks/metrics_scaling.py [--quick] [--json results/metrics_scaling.json]

Labelings: ``y_true`` has K classes of unequal size (sizes ~ 1/rank^0.3, or ImageNet-1k's 732..1300 per
class at the largest size); ``y_pred`` has M clusters and agrees with the classes for about 60% of the points
(classes beyond M are folded onto clusters, some classes split in two when M > K), the rest random.
Sizes: N = 1e4, 1e5, 1e6 with K = 100, M = 150; full mode adds ImageNet-1k size, N = 1,281,167 with
1000 x 1000, where scikit-learn's AMI takes ~40 s - it is timed once (``reps`` column) at the largest size.

Columns: seconds for ours and scikit-learn, the speed-up, and |ours - sklearn|. ACC has no scikit-learn
function; its baseline is ``contingency_matrix`` + ``scipy.optimize.linear_sum_assignment``, as usually done.
``all4`` is ``clustering_scores`` (NMI, AMI, ARI, ACC from one table) vs the four scikit-learn calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from _common import parse_args, print_table, timed, write_json
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from nrcc_scale.cluster.metrics import (
    adjusted_mutual_info,
    adjusted_rand,
    clustering_accuracy,
    clustering_scores,
    normalized_mutual_info,
)


def labelings(n: int, k: int, m: int, seed: int = 0, imagenet: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if imagenet:  # ImageNet-1k train: most classes 1300 images, some down to 732
        sizes = np.full(k, 1300)
        sizes[: k // 3] = rng.integers(732, 1300, k // 3)
    else:
        sizes = 1.0 / np.arange(1, k + 1) ** 0.3
    sizes = np.floor(sizes / sizes.sum() * n).astype(np.int64)
    sizes[: n - sizes.sum()] += 1
    y = rng.permutation(np.repeat(np.arange(k), sizes))
    split = rng.integers(0, 2, n) * k  # cluster ids k..2k-1 split classes when m > k
    agree = (y + np.where(y < m - k, split, 0)) % m
    p = np.where(rng.random(n) < 0.6, agree, rng.integers(0, m, n))
    return y, rng.permutation(m)[p]


def sklearn_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    table = contingency_matrix(y, p)
    r, c = linear_sum_assignment(table, maximize=True)
    return float(table[r, c].sum()) / len(y)


def sklearn_all(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"nmi": normalized_mutual_info_score(y, p), "ami": adjusted_mutual_info_score(y, p),
            "ari": adjusted_rand_score(y, p), "acc": sklearn_accuracy(y, p)}


PAIRS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "nmi": (normalized_mutual_info, normalized_mutual_info_score),
    "ari": (adjusted_rand, adjusted_rand_score),
    "ami": (adjusted_mutual_info, adjusted_mutual_info_score),
    "acc": (clustering_accuracy, sklearn_accuracy),
}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    cases: list[tuple[int, int, int, bool]] = [(10_000, 100, 150, False), (100_000, 100, 150, False),
                                               (1_000_000, 100, 150, False)]
    if not args.quick:
        cases.append((1_281_167, 1000, 1000, True))
    repeats = 3 if args.quick else 5
    rows = []
    for n, k, m, imagenet in cases:
        y, p = labelings(n, k, m, imagenet=imagenet)
        largest = (n, k, m) == cases[-1][:3]
        for metric, (ours_fn, ref_fn) in PAIRS.items():
            ours_t, ours_v = timed(lambda f=ours_fn, y=y, p=p: f(y, p), repeats)
            slow = largest and metric == "ami"  # scikit-learn's AMI: time it once
            ref_t, ref_v = timed(lambda f=ref_fn, y=y, p=p: f(y, p), 1 if slow else repeats,
                                 warmup=0 if slow else 1)
            rows.append({"N": n, "KxM": f"{k}x{m}", "metric": metric, "ours_s": ours_t, "sklearn_s": ref_t,
                         "speedup": ref_t / ours_t, "abs_diff": abs(ours_v - ref_v), "value": ours_v,
                         "reps": 1 if slow else repeats})
        ours_t, _ = timed(lambda y=y, p=p: clustering_scores(y, p), repeats)
        all_ref = sum(r["sklearn_s"] for r in rows[-4:])
        rows.append({"N": n, "KxM": f"{k}x{m}", "metric": "all4", "ours_s": ours_t, "sklearn_s": all_ref,
                     "speedup": all_ref / ours_t, "abs_diff": max(r["abs_diff"] for r in rows[-4:]),
                     "value": None, "reps": repeats})
        print_table(rows[-5:], title=f"N={n}, {k} classes x {m} clusters (times in s)",
                    columns=["metric", "ours_s", "sklearn_s", "speedup", "abs_diff", "value", "reps"])
    print_table(rows, columns=["N", "KxM", "metric", "ours_s", "sklearn_s", "speedup", "abs_diff", "reps"],
                title="Clustering metrics: ours vs scikit-learn (summary)")
    worst = max(r["abs_diff"] for r in rows)
    print(f"\nlargest |ours - sklearn| over all metrics and sizes: {worst:.2e}")
    ami_big = [r for r in rows if r["metric"] == "ami"][-1]
    print(f"AMI at N={ami_big['N']} ({ami_big['KxM']}): ours {ami_big['ours_s']:.3f} s, "
          f"scikit-learn {ami_big['sklearn_s']:.1f} s")
    if args.json:
        columns = ["N", "KxM", "metric", "ours_s", "sklearn_s", "speedup", "abs_diff", "reps"]
        notes = ["speedup = scikit-learn time / ours, same labelings, side by side; abs_diff = |ours - sklearn| "
                 "(ACC's baseline: contingency_matrix + linear_sum_assignment). Nothing is extrapolated.",
                 "Times on a 2-core machine shared with other work."]
        notes += [f"scikit-learn is faster than ours for {r['metric']} at N={r['N']} ({r['speedup']:.2f}x)"
                  for r in rows if r["speedup"] < 1]
        write_json(args.json, {"benchmark": "metrics_scaling", "quick": args.quick, "rows": rows,
                               "report": {"title": "Clustering metrics: ours vs scikit-learn", "columns": columns,
                                          "rows": [{c: r.get(c) for c in columns} for r in rows],
                                          "notes": notes, "plots": []}})


if __name__ == "__main__":
    main()
