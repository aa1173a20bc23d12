"""Training checkpoints: one folder per checkpoint, written atomically, loadable with ``weights_only=True``.

    checkpoint_<epoch>/
        state.pt          model (online, target, method buffers such as CueCo's queue and centroids),
                          optimizer, AMP scaler, epoch, step, sampler epoch, learning-rate schedule,
                          metric history, config, world size  -- written by rank 0
        rng_rank<r>.pt    every RNG state of worker r       -- written by every worker

Each file is written under a temporary name and renamed when complete, so a crash or a kill during a
save leaves the previous checkpoint intact. Under Ray Train, every worker reports its own folder and Ray
merges them into one checkpoint folder in storage; Ray's upload is not atomic, which is why a folder only
counts as a checkpoint once its state loads and every worker's RNG file is present
(:func:`checkpoint_is_complete`).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from nrcc_scale.utils.files import atomic_path

STATE_FILE = "state.pt"
FORMAT_VERSION = 1
#: What state.pt holds for an exact resume (tests check every key; ``sampler_epoch`` and ``schedule`` only
#: let a resume verify that the data order and the learning-rate schedule are the ones of the saved run).
REQUIRED_STATE_KEYS = ("model", "optimizer", "scaler", "epoch", "step", "sampler_epoch", "schedule", "history",
                       "config", "world_size", "resolution")
#: Testing aid, never set in normal runs: ``"<epoch>:<seconds>"`` makes rank 0 pause for ``seconds`` inside
#: :func:`write_checkpoint` of that epoch, after the RNG file and before state.pt, so a test can kill the
#: process while a checkpoint is half written.
TEST_PAUSE_ENV = "NRCC_TEST_CHECKPOINT_PAUSE"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with its path and what to do."""


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def save_torch(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_checkpoint(directory: Path, rank: int, rng: dict[str, Any], state: dict[str, Any] | None) -> None:
    """Write this worker's part of a checkpoint into ``directory`` (rank 0 also writes the state)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_torch(rng, directory / rng_file(rank))
    if state is not None:
        _test_pause(int(state["epoch"]), directory)
        save_torch({**state, "format_version": FORMAT_VERSION}, directory / STATE_FILE)


def _test_pause(epoch: int, directory: Path) -> None:
    """The slow-write hook of :data:`TEST_PAUSE_ENV` (inactive unless that variable is set)."""
    spec = os.environ.get(TEST_PAUSE_ENV, "")
    if not spec:
        return
    at, seconds = spec.split(":")
    if int(at) == epoch:
        print(f"{TEST_PAUSE_ENV}: pausing {float(seconds):g} s inside write_checkpoint({directory})",
              file=sys.stderr, flush=True)
        time.sleep(float(seconds))


def load_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and what to do
        raise CheckpointError(f"cannot read checkpoint file {path}: {err}. Delete this checkpoint folder "
                              f"to resume from the previous one.") from err


def read_state(directory: Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not an nrcc-scale checkpoint: {STATE_FILE} is missing")
    state = load_torch(path)
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format_version')} is not supported "
                              f"(expected {FORMAT_VERSION})")
    return state


def checkpoint_is_complete(directory: Path) -> bool:
    """True when state.pt loads and the RNG file of every worker that wrote the checkpoint is present.
    A folder that Ray was still uploading (or a copy cut short) fails one of the two."""
    try:
        state = read_state(directory)
    except CheckpointError:
        return False
    return all((Path(directory) / rng_file(r)).is_file() for r in range(int(state.get("world_size", 1))))


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
