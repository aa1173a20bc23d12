"""The paper's Table 1 / Table 13: how far do views move in the learned embedding, per transformation?

For up to 1000 images of the evaluation set, each image x and one transformed view T(x) are embedded with
the trained model's evaluation encoder (target encoder + projector, L2-normalised, eval mode), and the
Euclidean distance ||e(x) - e(T(x))|| is averaged (mean +- std) per transformation:

* colour jitter (p = 1), grayscale (p = 1), horizontal flip, random resized crop — the four of Table 1;
* SGHMC at zeta = 1, 3, ..., 13 steps (Table 13), run exactly as in training: from x, on the potential of
  the batch's view-b embeddings through the frozen potential network (BatchNorm statistics untouched),
  with the run's delta1-delta3. The batch's "view b" is one training-style augmentation of the batch.

The paper claims SGHMC views sit farther than every ordinary augmentation (Table 1) and move closer again
as zeta grows (Table 13). The script prints the table and says whether that holds for the checkpoint.

    python benchmarks/negative_distance.py --checkpoint RUN_DIR [--json out.json]
    python benchmarks/negative_distance.py --quick      # trains a short default model first
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

import _common
import numpy as np
import torch

from nrcc_scale.config import AugmentConfig
from nrcc_scale.data.augment import BatchPhotometricAugment, SpatialAugment
from nrcc_scale.data.registry import build_data
from nrcc_scale.engine.checkpoint import find_latest_checkpoint
from nrcc_scale.evaluation.checkpoint_eval import load_trained
from nrcc_scale.evaluation.embed import normalizer
from nrcc_scale.methods.sghmc import negative_views, potential_gradient
from nrcc_scale.models.batchnorm import preserved_batchnorm_stats

ZETAS = (1, 3, 5, 7, 9, 11, 13)


def _add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="checkpoint or run folder (default: train one)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=250, help="SGHMC batch (the potential's reference set)")
    parser.add_argument("--seed", type=int, default=0)


def _train_quick(folder: Path) -> Path:
    cmd = [sys.executable, "-m", "nrcc_scale.train", "--no-ray", "--no-eval", f"storage_path={folder}",
           "name=quick", "train.epochs=5"]
    subprocess.run(cmd, check=True, cwd=_common.REPO_ROOT, stdout=subprocess.DEVNULL)
    return folder / "quick"


@torch.no_grad()
def _embed(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(x)


def measure(checkpoint: Path, samples: int, batch: int, seed: int) -> dict[str, np.ndarray]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trained = load_trained(checkpoint, device)
    cfg, res = trained.cfg, trained.resolution
    source = build_data(cfg.data, seed=cfg.train.seed).evaluate
    rows = np.sort(np.random.default_rng(seed).choice(len(source), min(samples, len(source)), replace=False))
    model = trained.method.embedding_model().eval()
    mean, std = normalizer(source, device)
    spatial_id = SpatialAugment(res, (1.0, 1.0), flip_p=0.0)  # whole image, resized: the "original"
    crop = SpatialAugment(res, (cfg.data.augment.crop_scale_min, cfg.data.augment.crop_scale_max), flip_p=0.0)
    train_spatial = SpatialAugment(res, (cfg.data.augment.crop_scale_min, cfg.data.augment.crop_scale_max),
                                   cfg.data.augment.flip_p)

    def photometric(**kw) -> BatchPhotometricAugment:
        aug = dataclasses.replace(AugmentConfig(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0), **kw)
        return BatchPhotometricAugment(aug, source.mean, source.std, res).to(device)

    jitter, gray = photometric(jitter_p=1.0), photometric(grayscale_p=1.0)
    train_photo = BatchPhotometricAugment(cfg.data.augment, source.mean, source.std, res).to(device)
    network = trained.method.target if hasattr(trained.method, "target") else trained.method.online
    sghmc_cfg = cfg.method.nrcc.sghmc
    space = sghmc_cfg.potential_space
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dist: dict[str, list[np.ndarray]] = {}

    def add(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
        dist.setdefault(name, []).append((a - b).norm(dim=1).cpu().numpy())

    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        images = [source.image(int(i)) for i in chunk]
        uint8 = torch.stack([spatial_id(im, rng) for im in images]).to(device)
        x = (uint8.float() / 255.0 - mean) / std
        base = _embed(model, x)
        add("colour jitter", base, _embed(model, jitter(uint8)))
        add("grayscale", base, _embed(model, gray(uint8)))
        add("horizontal flip", base, _embed(model, x.flip(-1)))
        add("random resized crop", base,
            _embed(model, ((torch.stack([crop(im, rng) for im in images]).to(device).float() / 255.0) - mean) / std))
        view_b = train_photo(torch.stack([train_spatial(im, rng) for im in images]).to(device))
        # the potential is evaluated as in training: train-mode BatchNorm (batch statistics), stats untouched
        network.train()
        with torch.no_grad(), preserved_batchnorm_stats(network):
            h_b, z_b = network(view_b)
        ref = h_b if space == "backbone" else z_b

        def features(xs: torch.Tensor) -> torch.Tensor:
            h, z = network(xs)
            return h if space == "backbone" else z

        def grad_at(xs: torch.Tensor, ref: torch.Tensor = ref) -> torch.Tensor:
            network.train()
            with preserved_batchnorm_stats(network):  # the training's potential gradient, BN untouched
                g = potential_gradient(features, xs, ref, sghmc_cfg.potential_pairs)
            network.eval()
            return g

        for zeta in ZETAS:
            views = negative_views("sghmc", x, grad_at, dataclasses.replace(sghmc_cfg, steps=zeta))
            add(f"SGHMC, zeta = {zeta}", base, _embed(model, views))
    return {name: np.concatenate(parts) for name, parts in dist.items()}


def main() -> None:
    args = _common.parse_args(__doc__.splitlines()[0], _add_arguments)
    if args.quick:
        args.samples = min(args.samples, 500)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.checkpoint or _train_quick(Path(tmp))
        checkpoint = folder if (folder / "state.pt").is_file() else find_latest_checkpoint(folder)
        if checkpoint is None:
            raise SystemExit(f"no checkpoint under {folder}")
        dist = measure(checkpoint, args.samples, args.batch, args.seed)
    rows = [{"transformation": name, "mean": float(d.mean()), "std": float(d.std()), "n": len(d)}
            for name, d in dist.items()]
    print(f"distance in the embedding between an image and its view ({checkpoint})")
    _common.print_table(rows, floatfmt="{:.4f}")
    ordinary = max(r["mean"] for r in rows[:4])
    sghmc1 = dist["SGHMC, zeta = 1"].mean()
    trend = [dist[f"SGHMC, zeta = {z}"].mean() for z in ZETAS]
    print(f"SGHMC (zeta = 1) sits {'farther' if sghmc1 > ordinary else 'NOT farther'} than every ordinary "
          f"augmentation ({sghmc1:.4f} vs max {ordinary:.4f}); with more steps the distance "
          f"{'shrinks' if trend[-1] < trend[0] else 'grows'} ({trend[0]:.4f} -> {trend[-1]:.4f}).")
    if args.json:
        _common.write_json(args.json, {"checkpoint": str(checkpoint), "rows": rows,
                                       "sghmc_farther_than_augmentations": bool(sghmc1 > ordinary)})


if __name__ == "__main__":
    main()
