"""Schedules, optimizer groups and the EMA target, against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from nrcc_scale.config_load import load_config
from nrcc_scale.engine.optim import LARS, build_optimizer
from nrcc_scale.engine.schedule import cosine_with_warmup, peak_lr, set_learning_rate
from nrcc_scale.methods import build_method
from nrcc_scale.models.ema import ema_momentum, ema_update, make_target


def test_cosine_schedule_with_linear_warmup() -> None:
    total, warmup, peak = 100, 10, 0.4
    lrs = [cosine_with_warmup(s, total, warmup, peak) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / warmup)
    assert lrs[9] == pytest.approx(peak)
    assert lrs[10] == pytest.approx(peak)
    assert lrs[55] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert cosine_with_warmup(total, total, warmup, peak, min_ratio=0.1) == pytest.approx(0.1 * peak)


def test_linear_scaling_rule_and_predictor_lr_times_ten() -> None:
    assert peak_lr(0.05, 512) == pytest.approx(0.1)
    cfg = load_config(overrides=["model.projector_hidden=16", "model.predictor_hidden=16", "model.projector_dim=8"])
    method = build_method(cfg, 8)
    opt = build_optimizer(method.parameter_groups(), cfg.optim, 0.1)
    set_learning_rate(opt, 0.2)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["main"]["lr"] == pytest.approx(0.2)
    assert by_name["predictor"]["lr"] == pytest.approx(2.0)
    predictor_ids = {id(p) for p in method.predictor.parameters()}
    assert {id(p) for p in by_name["predictor"]["params"]} == predictor_ids
    assert not predictor_ids & {id(p) for p in by_name["main"]["params"]}
    target_ids = {id(p) for p in method.target.parameters()}
    assert not target_ids & {id(p) for g in opt.param_groups for p in g["params"]}  # the EMA target is not trained


def test_ema_update_and_momentum_schedule() -> None:
    online = torch.nn.Linear(3, 2)
    target = make_target(online)
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o)
    assert ema_momentum(0.996, 0.0, cosine=True) == pytest.approx(0.996)
    assert ema_momentum(0.996, 1.0, cosine=True) == pytest.approx(1.0)
    assert ema_momentum(0.996, 0.5, cosine=True) == pytest.approx(0.998)
    assert ema_momentum(0.996, 0.7, cosine=False) == 0.996


def test_lars_scales_each_layer_by_its_trust_ratio() -> None:
    w = torch.nn.Parameter(torch.full((2, 2), 2.0))
    b = torch.nn.Parameter(torch.zeros(2))
    opt = LARS([w, b], lr=1.0, momentum=0.0, weight_decay=0.0, trust_coefficient=0.01)
    w.grad = torch.full((2, 2), 0.5)
    b.grad = torch.full((2,), 0.5)
    opt.step()
    trust = 0.01 * w.detach().new_tensor(4.0) / 1.0  # |w| = 4 before the step, |g| = 1
    torch.testing.assert_close(w.detach(), torch.full((2, 2), 2.0 - float(trust) * 0.5))
    torch.testing.assert_close(b.detach(), torch.full((2,), -0.5))  # 1-d: plain SGD, no trust ratio


@pytest.mark.parametrize("name", ["byol", "cueco", "infonce", "simsiam", "barlow_twins"])
def test_momentum_base_owns_the_target_and_its_ema(name: str) -> None:
    """BYOL and CueCo get their EMA target from one base class; the others have none. After a step the
    target equals m * target + (1 - m) * online with m from the cosine schedule."""
    from nrcc_scale.methods.momentum import MomentumMethod

    cfg = load_config(overrides=[f"method.name={name}", "model.projector_hidden=16", "model.predictor_hidden=16",
                                 "model.projector_dim=8", "method.cueco.queue_size=8",
                                 "method.cueco.num_centroids=4", "method.ema_momentum=0.9"])
    torch.manual_seed(0)
    method = build_method(cfg, 8)
    if name not in ("byol", "cueco"):
        assert not isinstance(method, MomentumMethod) and not hasattr(method, "target")
        assert method.eval_encoder() is method.online
        return
    assert isinstance(method, MomentumMethod) and method.eval_encoder() is method.target
    assert all(not p.requires_grad for p in method.target.parameters())
    with torch.no_grad():
        for p in method.online.parameters():
            p.add_(0.5)
    before = [p.clone() for p in method.target.parameters()]
    method.after_optimizer_step(0.5)
    m = 1.0 - 0.1 * (math.cos(math.pi * 0.5) + 1.0) / 2.0  # 0.95
    for t, b, o in zip(method.target.parameters(), before, method.online.parameters(), strict=True):
        torch.testing.assert_close(t, m * b + (1 - m) * o)


def test_engine_and_methods_import_no_evaluation_or_test_code() -> None:
    """The arrows run one way: the loop gets the monitor and the testing aids from its caller (train.py)."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "nrcc_scale"
    offending = []
    for folder in ("engine", "methods", "models"):
        for path in sorted((package / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                offending += [f"{folder}/{path.name}: {n}" for n in names
                              if n.startswith(("nrcc_scale.evaluation", "nrcc_scale.testing", "nrcc_scale.train",
                                               "nrcc_scale.tune"))]
    assert not offending, offending
