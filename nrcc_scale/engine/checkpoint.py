"""Training checkpoints: one folder per checkpoint, written atomically, loadable with ``weights_only=True``.

    checkpoint_<epoch>/
        state.pt          a TrainingState: model (online, target, method buffers such as CueCo's queue
                          and centroids), optimizer, AMP scaler, epoch, step, sampler epoch,
                          learning-rate schedule, metric history, config, world size, resolution
                                                            -- written by rank 0
        rng_rank<r>.pt    every RNG state of worker r       -- written by every worker

Each file is written under a temporary name and renamed when complete, so a crash or a kill during a
save leaves the previous checkpoint intact. Under Ray Train, every worker reports its own folder and Ray
merges them into one checkpoint folder in storage; Ray's upload is not atomic, which is why a folder only
counts as a checkpoint once its state loads and every worker's RNG file is present
(:func:`checkpoint_is_complete`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from nrcc_scale.utils.files import atomic_path

STATE_FILE = "state.pt"
FORMAT_VERSION = 1


@dataclass
class TrainingState:
    """What state.pt holds for an exact resume, written by :func:`write_checkpoint` and read by
    :func:`read_state` -- the only two places that know its on-disk form (a plain dict of these fields plus
    ``format_version``, so it loads with ``weights_only=True``). Every worker's RNG states sit next to it,
    one file per rank (:func:`read_rng`).

    ``sampler_epoch`` and ``schedule`` only let a resume verify that the data order and the learning-rate
    schedule are the ones of the saved run."""

    model: dict[str, Any]  # method.state_dict(): online, EMA target, predictor, buffers (CueCo's queue, ...)
    optimizer: dict[str, Any]
    scaler: dict[str, Any] | None  # the AMP GradScaler's state under fp16, else None
    epoch: int  # epochs completed
    step: int  # optimizer steps completed
    sampler_epoch: int
    schedule: dict[str, Any] | None  # what the learning-rate and EMA schedules depend on besides the step
    history: list[dict[str, Any]]  # one dict of metrics per epoch
    config: dict[str, Any]  # Config.to_dict() of the run
    world_size: int | None  # workers that wrote the checkpoint
    resolution: int  # training resolution in pixels

    def to_dict(self) -> dict[str, Any]:
        # shallow on purpose: dataclasses.asdict would deep-copy every tensor of the model and optimizer
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "format_version": FORMAT_VERSION}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: Path) -> TrainingState:
        """The saved dict (format 1). The first format-1 checkpoints lack ``sampler_epoch``, ``schedule``
        and sometimes ``world_size`` and ``scaler``; they still load (unknown world size: None)."""
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise CheckpointError(f"{path}: not a complete nrcc-scale checkpoint, {', '.join(missing)} missing. "
                                  f"Delete this checkpoint folder to resume from the previous one.")
        return cls(model=raw["model"], optimizer=raw["optimizer"], scaler=raw.get("scaler"),
                   epoch=int(raw["epoch"]), step=int(raw["step"]),
                   sampler_epoch=int(raw.get("sampler_epoch", raw["epoch"])), schedule=raw.get("schedule"),
                   history=list(raw["history"]), config=raw["config"],
                   world_size=int(raw["world_size"]) if raw.get("world_size") is not None else None,
                   resolution=int(raw["resolution"]))


#: Every field, in the order state.pt has them (tests check the file holds each).
REQUIRED_STATE_KEYS = tuple(f.name for f in fields(TrainingState))
_REQUIRED = ("model", "optimizer", "epoch", "step", "history", "config", "resolution")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with its path and what to do."""


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def save_torch(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_checkpoint(directory: Path, rank: int, rng: dict[str, Any], state: TrainingState | None,
                     before_state_file: Callable[[int, Path], None] | None = None) -> None:
    """Write this worker's part of a checkpoint into ``directory`` (rank 0 also writes the state).
    ``before_state_file(epoch, directory)`` runs between the RNG file and state.pt (a testing aid's hook:
    :mod:`nrcc_scale.testing`)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_torch(rng, directory / rng_file(rank))
    if state is not None:
        if before_state_file is not None:
            before_state_file(state.epoch, directory)
        save_torch(state.to_dict(), directory / STATE_FILE)


def load_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and what to do
        raise CheckpointError(f"cannot read checkpoint file {path}: {err}. Delete this checkpoint folder "
                              f"to resume from the previous one.") from err


def read_state(directory: Path) -> TrainingState:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not an nrcc-scale checkpoint: {STATE_FILE} is missing")
    raw = load_torch(path)
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} is not supported (expected {FORMAT_VERSION})")
    return TrainingState.from_dict(raw, path)


def checkpoint_is_complete(directory: Path) -> bool:
    """True when state.pt loads and the RNG file of every worker that wrote the checkpoint is present.
    A folder that Ray was still uploading (or a copy cut short) fails one of the two."""
    try:
        state = read_state(directory)
    except CheckpointError:
        return False
    return all((Path(directory) / rng_file(r)).is_file() for r in range(state.world_size or 1))


def read_rng(directory: Path, rank: int) -> dict[str, Any] | None:
    """This worker's RNG states, or None when the checkpoint came from fewer workers."""
    path = Path(directory) / rng_file(rank)
    return load_torch(path) if path.is_file() else None


_CKPT_RE = re.compile(r"^checkpoint_(\d+)$")


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint_{epoch:06d}"


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoint folders under ``folder`` (oldest first); half-written ones are skipped."""
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        if child.is_dir() and _CKPT_RE.match(child.name) and (child / STATE_FILE).is_file():
            found.append(child)
    return sorted(found, key=lambda p: int(_CKPT_RE.match(p.name).group(1)))  # type: ignore[union-attr]


def find_latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run folder, Ray's layout (``checkpoint_*`` directly in the run
    folder) or the in-process one (``checkpoints/checkpoint_*``). Half-written folders (a temporary name,
    a truncated state.pt, a missing worker's RNG file) are skipped, so a kill during a save falls back to
    the previous checkpoint."""
    candidates = list_checkpoints(run_dir) + list_checkpoints(run_dir / "checkpoints")
    ranked = sorted(candidates, key=lambda p: (int(_CKPT_RE.match(p.name).group(1)),  # type: ignore[union-attr]
                                               p.stat().st_mtime))
    for path in reversed(ranked):
        if checkpoint_is_complete(path):
            return path
    return None
