"""Generate synthetic "ImageNet-shaped" embeddings for the evaluation benchmarks (data is never committed).

    python benchmarks/make_embeddings.py --n 1281167 --classes 1000 --dim 256 --out /tmp/evaldata/in1k

writes ``<out>_X.npy`` (N x dim float32, unit rows) and ``<out>_y.npy`` (N int64 labels). Each sample is its
class mean (random unit vector) plus isotropic Gaussian noise of norm ~``noise`` (so, at the default 1.0, a
sample's cosine to its class mean is ~0.7 and to another class mean ~0), then normalised. Rows are written
in chunks straight into a memory-mapped .npy, so generating 1.28M x 256 needs ~100 MB beyond the file.
The same seed gives the same data; a prefix of the N=1,281,167 file is NOT the N=128,117 set (labels are
drawn per size), so each size is generated on its own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CHUNK = 65536


def generate(n: int, classes: int, dim: int, noise: float, seed: int, out: str) -> tuple[Path, Path]:
    """Write ``<out>_X.npy`` and ``<out>_y.npy``; return their paths."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, dim)).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    labels = rng.integers(0, classes, n).astype(np.int64)
    x_path, y_path = Path(f"{out}_X.npy"), Path(f"{out}_y.npy")
    x_path.parent.mkdir(parents=True, exist_ok=True)
    x = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        block = means[labels[start:stop]]
        block += (noise / np.sqrt(dim)) * rng.standard_normal((stop - start, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[start:stop] = block
    x.flush()
    del x
    np.save(y_path, labels)
    return x_path, y_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_281_167)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/evaldata/in1k")
    args = parser.parse_args()
    x_path, y_path = generate(args.n, args.classes, args.dim, args.noise, args.seed, args.out)
    print(f"wrote {x_path} ({args.n:,} x {args.dim} float32) and {y_path}")


if __name__ == "__main__":
    main()
