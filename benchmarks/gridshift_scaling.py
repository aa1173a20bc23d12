"""GridShift scaling: our NumPy and PyTorch backends vs efficient binning, MeanShift++ and scikit-learn.

    python benchmarks/gridshift_scaling.py [--quick] [--json results/gridshift_scaling.json] [--bandwidth H]

Data: 10 well-separated Gaussian blobs (std 1; centres on a lattice of spacing 12, jittered by up to 1 per
coordinate, so no two blobs touch) with N points in d dimensions; bandwidth h = 2 (two blob standard
deviations). Because the blobs are separated, the generating labels are a partition GridShift can and should
recover exactly: ``ari`` is the adjusted Rand index against them (the *reference partition*), and the goal
row asks for ARI = 1. For every (N, d) it times

* ``numpy``      - GridShift, NumPy backend (the CPU default);
* ``torch-cpu`` / ``torch-cuda`` - the PyTorch backend (CUDA only where available);
* ``binning``    - the least work any grid method must do, written the way a careful user would (and the way
                   GridShift itself bins): contiguous per-dimension columns, floor(x / h), one flat int64 cell
                   index, one ``np.bincount`` over the box and the occupied cells. The issue's goal is
                   ``numpy / binning <= 2`` at N = 10^6, d = 3, h = 2 (with ARI 1);
* ``ms++``       - a straightforward MeanShift++ (Jang & Jiang 2021) over the same grid with a Python dict,
                   only where it is affordable; ``ms++_same`` says whether its partition equals ours;
* ``sklearn``    - scikit-learn's ``MeanShift(bandwidth=h, bin_seeding=True)`` only at N = 2000 (its
                   neighbourhood queries make it far slower; see benchmarks/clustering_peers.py for it at
                   larger N).

The binning is timed from the same (N, d) row-major float64 array GridShift receives, so both pay for the
transpose into contiguous columns. GridShift and binning run alternately (at least 5 rounds) and
``numpy/binning`` is the median of the per-round ratios, so load drifting on a shared machine hits both alike.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict
from typing import Any

import numpy as np
from _common import parse_args, print_table, timed, write_json
from sklearn.metrics import adjusted_rand_score

from nrcc_scale.cluster import GridShift


def blobs(n: int, d: int, seed: int = 0, k: int = 10, spacing: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """k std-1 Gaussian blobs whose centres sit on distinct points of a lattice of the given spacing."""
    rng = np.random.default_rng(seed)
    side = math.ceil(k ** (1 / d)) + 1
    lattice = np.array(list(itertools.product(range(side), repeat=d)), dtype=np.float64)
    centers = lattice[rng.choice(len(lattice), k, replace=False)] * spacing - spacing * (side - 1) / 2
    centers += rng.uniform(-1, 1, size=(k, d))
    y = rng.integers(0, k, n)
    return centers[y] + rng.normal(size=(n, d)), y


def binning_only(X: np.ndarray, h: float) -> np.ndarray:
    """Efficient binning: contiguous columns, floor(x / h), one flat int64 cell index, one bincount.

    Returns the flat indices of the occupied cells (their point counts are ``bincount``'s non-zeros).
    """
    columns = np.floor(np.ascontiguousarray(X.T) / h)  # (d, N): each pass below reads one contiguous row
    lo, hi = columns.min(axis=1), columns.max(axis=1)
    sizes = (hi - lo + 1).astype(np.int64)
    index = (columns[0] - lo[0]).astype(np.int64)
    for k in range(1, len(sizes)):
        index *= sizes[k]
        index += (columns[k] - lo[k]).astype(np.int64)
    counts = np.bincount(index, minlength=int(np.prod(sizes)))
    return np.flatnonzero(counts)


def paired_times(fn_a: Any, fn_b: Any, repeats: int) -> tuple[float, float, float, Any]:
    """Median times of ``fn_a`` and ``fn_b`` run alternately, and the median of the per-pair ratios a / b.

    On a machine shared with other work the load drifts within seconds; timing the two back to back in each
    round and taking the median ratio of the pairs compares them under the same load.
    """
    result = fn_a()
    fn_b()
    times_a, times_b = [], []
    for _ in range(max(repeats, 5)):
        start = time.perf_counter()
        result = fn_a()
        times_a.append(time.perf_counter() - start)
        start = time.perf_counter()
        fn_b()
        times_b.append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times_a, times_b, strict=True)]
    return float(np.median(times_a)), float(np.median(times_b)), float(np.median(ratios)), result


def meanshift_pp(X: np.ndarray, h: float, max_iter: int = 100) -> np.ndarray:
    """MeanShift++ with a dict grid: per pass, bin all points, give each occupied cell the mean of the points
    in its 3^d neighbourhood, move every point to its cell's value; stop when no cells merged."""
    d = X.shape[1]
    offsets = list(itertools.product((-1, 0, 1), repeat=d))
    positions = np.array(X, dtype=np.float64)
    for _ in range(max_iter):
        cells = [tuple(c) for c in np.floor(positions / h).astype(np.int64).tolist()]
        grid: dict[tuple[int, ...], list[Any]] = defaultdict(lambda: [0, np.zeros(d)])
        for cell, p in zip(cells, positions, strict=True):
            grid[cell][0] += 1
            grid[cell][1] += p
        shifted = {}
        for cell in grid:
            count, total = 0, np.zeros(d)
            for off in offsets:
                nb = grid.get(tuple(c + o for c, o in zip(cell, off, strict=True)))
                if nb is not None:
                    count += nb[0]
                    total += nb[1]
            shifted[cell] = total / count
        positions = np.array([shifted[c] for c in cells])
        if len({tuple(c) for c in np.floor(positions / h).astype(np.int64).tolist()}) == len(grid):
            break
    _, labels = np.unique(np.floor(positions / h), axis=0, return_inverse=True)
    return labels.reshape(-1)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a, b], axis=1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], lambda p: p.add_argument(
        "--bandwidth", type=float, default=2.0, help="grid cell side h (default 2, the issue's goal setting)"))
    import torch

    cuda = torch.cuda.is_available()
    sk_max = 2_000  # scikit-learn's MeanShift takes ~20 s already at N = 2000 (O(N^2) seeds x neighbours)
    if args.quick:
        cases = [(2_000, 2), (10_000, 2), (10_000, 3), (100_000, 3), (1_000_000, 3)]
        repeats, msp_budget = 3, 3e5
    else:
        sizes, dims = (10_000, 100_000, 1_000_000), (2, 3, 4, 5)
        cases = [(2_000, 2), (2_000, 3)] + [(n, d) for n in sizes for d in dims]
        repeats, msp_budget = 5, 3e6
    h = args.bandwidth
    rows = []
    for n, d in cases:
        X, y = blobs(n, d, seed=d)
        row: dict[str, Any] = {"N": n, "d": d}
        t_gs, t_bin, ratio, gs = paired_times(lambda X=X: GridShift(h, backend="numpy").fit(X),
                                              lambda X=X: binning_only(X, h), repeats)
        row.update(numpy_s=t_gs, k=len(gs.cluster_centers_), iters=gs.n_iter_)
        row["ari"] = adjusted_rand_score(y, gs.labels_)
        row["binning_s"] = t_bin
        row["numpy/binning"] = ratio
        t, tgs = timed(lambda X=X: GridShift(h, backend="torch-cpu").fit(torch.from_numpy(X)), repeats)
        row["torch_cpu_s"] = t
        row["torch_same"] = bool(np.array_equal(tgs.labels_, gs.labels_))
        if cuda:
            Xc = torch.from_numpy(X).cuda()
            t, cgs = timed(lambda Xc=Xc: GridShift(h).fit(Xc), repeats, sync=torch.cuda.synchronize)
            row["torch_cuda_s"] = t
            row["cuda_same"] = bool(np.array_equal(cgs.labels_, gs.labels_))
        if n * 3**d <= msp_budget:
            start = time.perf_counter()
            ref = meanshift_pp(X, h)
            row["ms++_s"] = time.perf_counter() - start
            row["ms++_same"] = same_partition(ref, gs.labels_)
        if n <= sk_max and d <= 3:
            from sklearn.cluster import MeanShift

            start = time.perf_counter()
            sk = MeanShift(bandwidth=h, bin_seeding=True).fit(X)
            row["sklearn_s"] = time.perf_counter() - start
            row["sklearn_ari"] = adjusted_rand_score(y, sk.labels_)
        rows.append(row)
        print_table([row], title=None if len(rows) > 1 else f"GridShift scaling (h = {h:g}, 10 blobs, times in s)")
    columns = ["N", "d", "k", "iters", "ari", "numpy_s", "binning_s", "numpy/binning", "torch_cpu_s",
               "torch_same", "torch_cuda_s", "cuda_same", "ms++_s", "ms++_same", "sklearn_s", "sklearn_ari"]
    print_table(rows, [c for c in columns if any(c in r for r in rows)], title="GridShift scaling (summary)")
    goal = [r for r in rows if r["N"] == 1_000_000 and r["d"] == 3]
    goal_line = None
    if goal:
        g = goal[0]
        met = g["numpy/binning"] <= 2 and g["ari"] == 1.0
        goal_line = (f"goal GridShift <= 2x efficient binning at N=1e6, d=3, h={h:g}, ARI 1 vs the blob labels: "
                     f"{g['numpy/binning']:.2f}x, ARI {g['ari']:.4f} ({'met' if met else 'NOT met'})")
        print("\n" + goal_line)
    if args.json:
        write_json(args.json, {"benchmark": "gridshift_scaling", "bandwidth": h, "quick": args.quick,
                               "rows": rows, "cuda": cuda, "goal_ratio_max": 2.0,
                               "report": _report(rows, h, goal_line)})


def _report(rows: list[dict[str, Any]], h: float, goal_line: str | None) -> dict[str, Any]:
    """The docs/benchmarks.md table: ours (GridShift, NumPy) vs the efficient-binning floor per (N, d)."""
    table = [{"N": r["N"], "d": r["d"], "clusters": r["k"], "ARI vs blob labels": r["ari"],
              "GridShift s": r["numpy_s"], "efficient binning s": r["binning_s"],
              "GridShift / binning": r["numpy/binning"], "ms++ same partition": r.get("ms++_same"),
              "sklearn MeanShift s": r.get("sklearn_s")} for r in rows]
    notes = [f"h = {h:g}; 10 separated std-1 blobs; ARI is against the generating blob labels (reference "
             "partition), which GridShift recovers exactly when ARI = 1.",
             "Binning is a floor, not a peer: it clusters nothing. The ratio says how much GridShift costs on "
             "top of the one pass over the points that any grid method needs.",
             "Times are medians of repeated runs on a 2-core machine shared with other work."]
    small = [r for r in rows if r["numpy/binning"] > 2]
    if small:
        worst = max(small, key=lambda r: r["numpy/binning"])
        notes.append(f"binning wins by more than 2x at {len(small)} of {len(rows)} sizes, up to "
                     f"{worst['numpy/binning']:.1f}x at N={worst['N']}, d={worst['d']}: there GridShift's fixed "
                     "cost per call (a few iterations of Python-level array calls, ~1 ms) outweighs the pass over "
                     "the points")
    if goal_line:
        notes.append(goal_line)
    return {"title": f"GridShift vs efficient binning (h = {h:g})", "columns": list(table[0]), "rows": table,
            "notes": notes, "plots": []}


if __name__ == "__main__":
    main()
