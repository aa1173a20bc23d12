"""GridShift scaling: our NumPy and PyTorch backends vs MeanShift++, scikit-learn's MeanShift and binning.

    python benchmarks/gridshift_scaling.py [--quick] [--json results/gridshift_scaling.json]

Data: 10 Gaussian blobs (std 1, centres uniform in [-10, 10]^d) with N points in d dimensions; bandwidth
h = 1 (one blob standard deviation). For every (N, d) it times

* ``numpy``      - GridShift, NumPy backend (the CPU default);
* ``torch-cpu`` / ``torch-cuda`` - the PyTorch backend (CUDA only where available);
* ``binning``    - merely binning the points: floor(x / h), packed int64 keys, one ``np.unique``. The issue's
                   goal is ``numpy / binning <= 2`` at N = 10^6, d = 3;
* ``ms++``       - a straightforward MeanShift++ (Jang & Jiang 2021) over the same grid with a Python dict,
                   only where it is affordable; ``same`` says whether its partition equals ours;
* ``sklearn``    - scikit-learn's ``MeanShift(bandwidth=h)``, O(N^2), only at N = 2000.

``ari`` is the adjusted Rand index of our partition against the blob labels.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from typing import Any

import numpy as np
from _common import parse_args, print_table, timed, write_json
from sklearn.metrics import adjusted_rand_score

from nrcc_scale.cluster import GridShift


def blobs(n: int, d: int, seed: int = 0, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-10, 10, size=(k, d))
    y = rng.integers(0, k, n)
    return centers[y] + rng.normal(size=(n, d)), y


def binning_only(X: np.ndarray, h: float) -> np.ndarray:
    """What any grid method must do at least once: integer cells, one int64 key each, unique keys."""
    cells = np.floor(X / h)
    lo = np.array([cells[:, k].min() for k in range(X.shape[1])])
    hi = np.array([cells[:, k].max() for k in range(X.shape[1])])
    sizes = (hi - lo + 1).astype(np.int64)
    strides = np.cumprod(np.concatenate([sizes[1:], [1]])[::-1])[::-1].astype(np.float64)
    keys = ((cells - lo) @ strides).astype(np.int64)
    return np.unique(keys)


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
    args = parse_args(__doc__.splitlines()[0])
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
    h = 1.0
    rows = []
    for n, d in cases:
        X, y = blobs(n, d, seed=d)
        row: dict[str, Any] = {"N": n, "d": d}
        t, gs = timed(lambda X=X: GridShift(h, backend="numpy").fit(X), repeats)
        row.update(numpy_s=t, k=len(gs.cluster_centers_), iters=gs.n_iter_)
        row["ari"] = adjusted_rand_score(y, gs.labels_)
        row["binning_s"] = timed(lambda X=X: binning_only(X, h), repeats)[0]
        row["numpy/binning"] = row["numpy_s"] / row["binning_s"]
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
            sk = MeanShift(bandwidth=h).fit(X)
            row["sklearn_s"] = time.perf_counter() - start
            row["sklearn_ari"] = adjusted_rand_score(y, sk.labels_)
        rows.append(row)
        print_table([row], title=None if len(rows) > 1 else "GridShift scaling (h = 1, 10 blobs, times in s)")
    columns = ["N", "d", "k", "iters", "ari", "numpy_s", "binning_s", "numpy/binning", "torch_cpu_s",
               "torch_same", "torch_cuda_s", "cuda_same", "ms++_s", "ms++_same", "sklearn_s", "sklearn_ari"]
    print_table(rows, [c for c in columns if any(c in r for r in rows)], title="GridShift scaling (summary)")
    goal = [r for r in rows if r["N"] == 1_000_000 and r["d"] == 3]
    if goal:
        print(f"\ngoal GridShift <= 2x binning at N=1e6, d=3: {goal[0]['numpy/binning']:.2f}x "
              f"({'met' if goal[0]['numpy/binning'] <= 2 else 'NOT met'})")
    if args.json:
        write_json(args.json, {"benchmark": "gridshift_scaling", "bandwidth": h, "quick": args.quick,
                               "rows": rows, "cuda": cuda, "goal_ratio_max": 2.0})


if __name__ == "__main__":
    main()
