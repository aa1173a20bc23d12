"""Testing aids, inert unless their environment variables are set; never set in normal runs.

* ``NRCC_FAULT_AT="<epoch>:<batch>:<rank>[:raise|hang]"`` makes worker ``rank`` raise (or hang until
  killed) just before batch ``batch`` (0-based) of epoch ``epoch`` (1-based, as printed). It fires once: the
  file named by ``NRCC_FAULT_MARKER`` (required) is created when it fires, and an existing marker disarms
  it, so the restarted attempt runs through.
* ``NRCC_TEST_CHECKPOINT_PAUSE="<epoch>:<seconds>"`` makes rank 0 pause for ``seconds`` while it writes the
  checkpoint of that epoch, after its RNG file and before state.pt, so a test can kill the process while a
  checkpoint is half written.

The training loop knows nothing of them: ``nrcc_scale.train.loop_hooks`` plugs :meth:`FaultInjector.check`
and :func:`checkpoint_pause` into the loop's hooks (``before_batch``, ``before_state_file``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nrcc_scale.config import ConfigError

FAULT_ENV = "NRCC_FAULT_AT"
FAULT_MARKER_ENV = "NRCC_FAULT_MARKER"
TEST_PAUSE_ENV = "NRCC_TEST_CHECKPOINT_PAUSE"


def _emit_stderr(message: str) -> None:
    # a direct write: Ray Train V2 patches ``print`` in its workers (see engine/loop.py, ``_emit``)
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


class InjectedFault(RuntimeError):
    """Raised by the ``NRCC_FAULT_AT`` testing aid."""


@dataclass
class FaultInjector:
    """The ``NRCC_FAULT_AT`` testing aid (see the module docstring); None unless that variable is set."""

    epoch: int
    batch: int
    rank: int
    action: str
    marker: Path

    @classmethod
    def from_env(cls) -> FaultInjector | None:
        spec = os.environ.get(FAULT_ENV, "")
        if not spec:
            return None
        parts = spec.split(":")
        marker = os.environ.get(FAULT_MARKER_ENV, "")
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in ("raise", "hang")) or not marker:
            raise ConfigError(f"{FAULT_ENV}={spec!r}: expected epoch:batch:rank[:raise|hang], with "
                              f"{FAULT_MARKER_ENV} naming the file that makes it fire only once")
        action = parts[3] if len(parts) == 4 else "raise"
        return cls(int(parts[0]), int(parts[1]), int(parts[2]), action, Path(marker))

    def check(self, rank: int, epoch: int, batch: int) -> None:
        """The loop's ``before_batch`` hook (``epoch`` 1-based, ``batch`` 0-based)."""
        if (rank, epoch, batch) != (self.rank, self.epoch, self.batch) or self.marker.exists():
            return
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(f"{FAULT_ENV} fired at epoch {epoch} batch {batch} rank {rank}\n")
        message = f"{FAULT_ENV}: injected fault at epoch {epoch} batch {batch} on rank {rank} ({self.action})"
        _emit_stderr(message)
        if self.action == "raise":
            raise InjectedFault(message)
        while True:  # "hang": wait to be killed
            time.sleep(1.0)


def checkpoint_pause(epoch: int, directory: Path) -> None:
    """The slow-write hook of ``NRCC_TEST_CHECKPOINT_PAUSE`` (does nothing unless that variable is set)."""
    spec = os.environ.get(TEST_PAUSE_ENV, "")
    if not spec:
        return
    at, seconds = spec.split(":")
    if int(at) == epoch:
        print(f"{TEST_PAUSE_ENV}: pausing {float(seconds):g} s inside write_checkpoint({directory})",
              file=sys.stderr, flush=True)
        time.sleep(float(seconds))


def checkpoint_pause_from_env() -> Callable[[int, Path], None] | None:
    """:func:`checkpoint_pause` when its variable is set, else None (no hook at all)."""
    return checkpoint_pause if os.environ.get(TEST_PAUSE_ENV) else None
