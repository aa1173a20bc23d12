"""Full precision for the objectives, whoever calls them, and a loss scale for fp16 input gradients.

Why this module exists
----------------------
Training runs the networks under ``torch.autocast`` (bf16 or fp16). Autocast casts the *inputs of matrix
products* to the low precision, whatever dtype the tensors arrive in, so a loss that merely upcasts its
arguments still computes ``u @ v.T`` in bf16 (8 mantissa bits): measured on CPU autocast, the NRCC
regularizer (~2e-3) was off by 1.6e-4 and its gradient by 7 %, and the NRCC term vanished in the bf16
rounding of the total loss. :func:`full_precision` makes each objective guard itself: autocast is switched
off inside it and every floating tensor argument is promoted to at least float32 (float64 stays float64,
which is what the tests compare against).

fp16 has a 5-bit exponent: the SGHMC potential's gradient with respect to the pixels, pulled back through
an fp16 network, underflows to zero for small potentials. :class:`InputGradScaler` multiplies the
potential by a dynamic scale before the input-backward and divides it out afterwards (as
``torch.amp.GradScaler`` does for the parameter gradients), halving the scale on overflow and growing it
after a run of clean steps, all on the device (no host synchronisation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable[..., Any])


def at_least_float32(x: Any) -> Any:
    """A floating tensor promoted to float32 (float64 kept); anything else unchanged."""
    if isinstance(x, Tensor) and x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
        return x.float()
    return x


def _device_types(values: list[Any]) -> set[str]:
    types = {v.device.type for v in values if isinstance(v, Tensor)}
    types.add("cpu")  # CPU autocast may be on even when the tensors live on a GPU
    return types


def autocast_off(*tensors: Any) -> ExitStack:
    """A context that disables autocast for the device types of ``tensors`` (and the CPU)."""
    stack = ExitStack()
    for device_type in sorted(_device_types(list(tensors))):
        stack.enter_context(torch.autocast(device_type, enabled=False))
    return stack


@functools.cache
def _takes_device_type() -> bool:
    """``torch.is_autocast_enabled(device_type)`` exists from torch 2.4 on; before, always disable."""
    try:
        torch.is_autocast_enabled("cpu")
    except TypeError:
        return False
    return True


def full_precision(fn: F) -> F:
    """Decorator: run ``fn`` with autocast off and its floating tensor arguments in >= float32."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args = tuple(at_least_float32(a) for a in args)
        kwargs = {k: at_least_float32(v) for k, v in kwargs.items()}
        with autocast_off(*args, *kwargs.values()):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast currently casts to on ``device_type``, or None when autocast is off there."""
    if not (torch.is_autocast_enabled(device_type) if _takes_device_type() else torch.is_autocast_enabled()):
        return None
    getter = getattr(torch, "get_autocast_dtype", None)
    if getter is not None:
        return getter(device_type)
    return torch.get_autocast_gpu_dtype() if device_type == "cuda" else torch.get_autocast_cpu_dtype()


class InputGradScaler:
    """Dynamic loss scale for input gradients taken under fp16 autocast (a no-op otherwise).

    ``grad(potential, x)`` returns d potential / d x. Under fp16 it differentiates ``scale * potential``
    and divides by ``scale`` in float32; a non-finite result (overflow) gives a zero gradient for this call
    (the SGHMC step is then a friction-and-noise step) and halves the scale; ``growth_interval`` clean calls
    in a row double it. The scale lives on the device, so nothing waits for the GPU.
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_interval: int = 200) -> None:
        self.init_scale = init_scale
        self.growth_interval = growth_interval
        self._scale: Tensor | None = None
        self._clean: Tensor | None = None

    def _state(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._scale is None or self._scale.device != device:
            self._scale = torch.full((), self.init_scale, dtype=torch.float32, device=device)
            self._clean = torch.zeros((), dtype=torch.int64, device=device)
        assert self._clean is not None
        return self._scale, self._clean

    @property
    def scale(self) -> float:
        """The current scale (reads the device: for tests and logs only)."""
        return float(self._scale) if self._scale is not None else self.init_scale

    def grad(self, potential: Tensor, x: Tensor, retain_graph: bool = False) -> Tensor:
        if autocast_dtype(x.device.type) != torch.float16 and x.dtype != torch.float16:
            (g,) = torch.autograd.grad(potential, x, retain_graph=retain_graph)
            return g
        scale, clean = self._state(x.device)
        (g,) = torch.autograd.grad(potential * scale, x, retain_graph=retain_graph)
        g = g.float() / scale
        finite = torch.isfinite(g).all()
        g = torch.where(finite, g, torch.zeros_like(g))
        clean.copy_(torch.where(finite, clean + 1, torch.zeros_like(clean)))
        grow = clean >= self.growth_interval
        new_scale = torch.where(finite, torch.where(grow, scale * 2.0, scale), scale * 0.5)
        scale.copy_(new_scale.clamp(1.0, 2.0 ** 24))
        clean.copy_(torch.where(grow, torch.zeros_like(clean), clean))
        return g.to(x.dtype)
