"""What NRCC costs on top of its base method, per training step (the paper's Table 7: 1.43x BYOL).

Modes, timed on the same backbone, batch and device, in interleaved rounds so drifting machine load hits
every mode alike; the table reports medians and the ratios NRCC / base:

* ``byol``, ``byol+nrcc`` (ours: SGHMC reuses BYOL's target forward, docs/spec/METHOD.md), ``infonce``,
  ``infonce+nrcc``;
* ``byol+nrcc (reference)`` — the public reference code's way: the chain runs over chunks of 16 images, each
  chunk recomputing the target embedding of the whole view-b batch, then a wasted online forward of x^c with
  a graph, then the step. Written here only to measure it; the library never does this.

One step = augmentation-free forward + backward + optimizer step + EMA update. Goal: byol+nrcc <= 1.30x byol.

    python benchmarks/sghmc_overhead.py --quick
    python benchmarks/sghmc_overhead.py --backbone resnet18 --resolution 32 --batch 128 --json out.json
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import _common
import torch

from nrcc_scale.config_load import load_config
from nrcc_scale.methods import build_method
from nrcc_scale.methods.sghmc import alignment_potential, sghmc_chain
from nrcc_scale.models.batchnorm import preserved_batchnorm_stats

REFERENCE_CHUNK = 16


def _add_arguments(parser) -> None:
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64, help="images per step (per device)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")


def build(name: str, nrcc: bool, args, reference: bool = False):
    overrides = [f"method.name={name}", f"model.backbone={args.backbone}", f"method.nrcc.enabled={nrcc}"]
    if reference:  # the reference code's choices, with x^c injected from the chunked chain below
        overrides += ["method.nrcc.negatives=augment", "method.nrcc.negatives_network=online",
                      "method.nrcc.anchor=projector", "method.nrcc.symmetric=false", "method.nrcc.gather=false",
                      "method.nrcc.exclude_self=false", "method.nrcc.positive_weight=0", "method.nrcc.temperature=0.5"]
    cfg = load_config(overrides=overrides)
    torch.manual_seed(0)
    method = build_method(cfg, args.resolution).to(args.device)
    opt = torch.optim.SGD(method.parameter_groups(), lr=0.01, momentum=0.9)
    return cfg, method, opt


def reference_negatives(method, x_a: torch.Tensor, x_b: torch.Tensor, cfg) -> torch.Tensor:
    """The reference code's SGHMC: per chunk of 16, recompute f_T(x^b) for the whole batch, one step."""
    target = method.target.backbone
    out = []
    for start in range(0, len(x_a), REFERENCE_CHUNK):
        chunk = x_a[start:start + REFERENCE_CHUNK]

        def grad_at(x: torch.Tensor) -> torch.Tensor:
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                ref = target(x_b).detach()  # recomputed for every chunk, as the reference code does
                potential = alignment_potential(target(x), ref, "batch")
                (g,) = torch.autograd.grad(potential, x)
            return g

        out.append(sghmc_chain(chunk, grad_at, cfg.method.nrcc.sghmc))
    x_c = torch.cat(out)
    method.online(x_c)  # the reference builds (and discards) an online graph for x^c
    return x_c.detach()


def make_step(method, opt, args, cfg, reference: bool) -> Callable[[torch.Tensor, torch.Tensor], None]:
    dtype = torch.bfloat16 if args.amp else None

    def step(x_a: torch.Tensor, x_b: torch.Tensor) -> None:
        with torch.autocast(x_a.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            if reference:
                with preserved_batchnorm_stats(method):
                    x_c = reference_negatives(method, x_a, x_b, cfg)
                out = method(x_a, x_b, x_c)
            else:
                out = method(x_a, x_b)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        method.after_optimizer_step(0.5)

    return step


def main() -> None:
    args = _common.parse_args(__doc__.splitlines()[0], _add_arguments)
    if args.quick:
        args.backbone, args.resolution, args.batch, args.rounds = "resnet_tiny", 16, 32, 5
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    modes = {
        "byol": build("byol", False, args),
        "byol+nrcc": build("byol", True, args),
        "byol+nrcc (reference)": build("byol", True, args, reference=True),
        "infonce": build("infonce", False, args),
        "infonce+nrcc": build("infonce", True, args),
    }
    steps = {name: make_step(method, opt, args, cfg, "reference" in name)
             for name, (cfg, method, opt) in modes.items()}
    gen = torch.Generator().manual_seed(0)
    x_a = torch.randn(args.batch, 3, args.resolution, args.resolution, generator=gen).to(device)
    x_b = torch.randn(args.batch, 3, args.resolution, args.resolution, generator=gen).to(device)
    for step in steps.values():  # warm-up (allocator, cudnn autotune, first-call overheads)
        step(x_a, x_b)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            sync()
            t0 = time.perf_counter()
            step(x_a, x_b)
            sync()
            times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    base = {"byol": "byol", "byol+nrcc": "byol", "byol+nrcc (reference)": "byol", "infonce": "infonce",
            "infonce+nrcc": "infonce"}
    rows = [{"mode": name, "median step (s)": median[name], "vs base": median[name] / median[base[name]]}
            for name in steps]
    print(f"{args.backbone} at {args.resolution} px, batch {args.batch}, {device}"
          f"{' bf16' if args.amp else ''}, {args.rounds} interleaved rounds")
    _common.print_table(rows, floatfmt="{:.3f}")
    goal = median["byol+nrcc"] / median["byol"]
    print(f"BYOL+NRCC / BYOL = {goal:.2f}x (goal <= 1.30; paper Table 7: 1.43x); "
          f"reference-code mode: {median['byol+nrcc (reference)'] / median['byol']:.2f}x")
    if args.json:
        _common.write_json(args.json, {"settings": {k: v for k, v in vars(args).items() if k != "json"},
                                       "median_seconds": median, "times": times,
                                       "ratios": {r["mode"]: r["vs base"] for r in rows},
                                       "report": {"title": f"NRCC step overhead ({args.backbone}, "
                                                  f"{args.resolution} px, batch {args.batch}, {device})",
                                                  "columns": ["mode", "median step (s)", "vs base"], "rows": rows,
                                                  "notes": [f"BYOL+NRCC / BYOL = {goal:.2f}x (goal <= 1.30; "
                                                            "paper Table 7: 1.43x); the reference code's way: "
                                                            f"{median['byol+nrcc (reference)'] / median['byol']:.2f}x",
                                                            f"goal {'met' if goal <= 1.30 else 'NOT met'}",
                                                            f"{args.rounds} interleaved rounds, medians"],
                                                  "plots": []}})


if __name__ == "__main__":
    main()
