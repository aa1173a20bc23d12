"""InfoNCE, BYOL, SimSiam and Barlow Twins, each with or without the NRCC regularizer.

One step (BYOL+NRCC, ζ = 1), and why it costs about 1.25x a BYOL step (docs/spec/METHOD.md, "Cost matters"):

1. online forwards of x^a and x^b (with parameter gradients), as BYOL;
2. target forwards of x^a and x^b, as BYOL — x^a's with the *input* requiring grad, so the same forward
   gives h̄(x^a) for the SGHMC potential; h̄(x^b) is the potential's reference, reused as is;
3. one input-only backward gives grad_X U at x^a; one SGHMC step gives x^c;
4. one no-grad target forward of x^c (BatchNorm statistics preserved) gives v^c = z̄^c;
5. loss = BYOL + NRCC(u = online predictor outputs, v^b = z̄ of the other view, v^c).

Methods without a target (InfoNCE, SimSiam, Barlow Twins) take h from the online network, held fixed
for the potential's gradient, reusing the online forward of x^a the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nrcc_scale.config import Config
from nrcc_scale.methods.barlow_twins import barlow_twins_loss
from nrcc_scale.methods.base import Encoder, SSLMethod, StepOutput, normalized
from nrcc_scale.methods.byol import byol_loss
from nrcc_scale.methods.distributed import gather_no_grad, gather_with_grad, row_offset
from nrcc_scale.methods.infonce import info_nce_loss
from nrcc_scale.methods.nrcc import nrcc_regularizer
from nrcc_scale.methods.precision import InputGradScaler
from nrcc_scale.methods.sghmc import alignment_potential, needs_gradient, negative_views
from nrcc_scale.methods.simsiam import simsiam_loss
from nrcc_scale.models.batchnorm import preserved_batchnorm_stats
from nrcc_scale.models.ema import ema_momentum, ema_update, make_target
from nrcc_scale.models.heads import MLPHead


class TwoViewMethod(SSLMethod):
    """Shared step: encode both views, make x^c, add NRCC. Subclasses give the base loss and what NRCC's
    anchors and positives are for them."""

    has_predictor = False
    has_target = False

    def __init__(self, cfg: Config, resolution: int) -> None:
        super().__init__(cfg, resolution)
        self.nrcc = cfg.method.nrcc
        self.use_nrcc = cfg.uses_nrcc
        self.needs_third_view = self.use_nrcc and self.nrcc.negatives == "augment"
        if self.has_predictor:
            self.predictor = MLPHead(cfg.model.projector_dim, cfg.model.predictor_hidden, cfg.model.projector_dim)
        if self.has_target:
            self.target = make_target(self.online)
        # fp16 autocast: the SGHMC input gradient is loss-scaled (a no-op in bf16 and float32)
        self.input_grad_scaler = InputGradScaler()

    # -- hooks for subclasses --------------------------------------------------------------------------
    def base_loss(self, out: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def nrcc_anchors(self, out: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(u^a, u^b): the anchors of the two views (un-normalised)."""
        return out["z_a"], out["z_b"]

    def nrcc_positives(self, out: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(v^b for anchors of view a, v^b for anchors of view b), gathered over workers."""
        return self._gather(normalized(out["z_b"]), grad=True), self._gather(normalized(out["z_a"]), grad=True)

    # -- the step --------------------------------------------------------------------------------------
    def predictor_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.predictor.parameters()) if self.has_predictor else []

    def eval_encoder(self) -> Encoder:
        return self.target if self.has_target else self.online

    def _gather(self, x: Tensor, grad: bool) -> Tensor:
        if not self.nrcc.gather:
            return x
        return gather_with_grad(x) if grad else gather_no_grad(x)

    def _potential_network(self) -> Encoder:
        return self.target if self.has_target else self.online

    def _negatives_network(self) -> Encoder:
        if self.has_target and self.nrcc.negatives_network == "target":
            return self.target
        return self.online

    def _potential_features(self, h: Tensor, z: Tensor) -> Tensor:
        return h if self.nrcc.sghmc.potential_space == "backbone" else z

    def forward(self, x_a: Tensor, x_b: Tensor, x_c: Tensor | None = None) -> StepOutput:
        sghmc = self.nrcc.sghmc
        want_grad = self.use_nrcc and needs_gradient(self.nrcc.negatives) and not (
            sghmc.resolution and sghmc.resolution != x_a.shape[-1])
        # x^a with an input gradient goes only through the network whose forward the potential reuses:
        # through the online network (trained), it would make the main backward compute and store a
        # gradient for the pixels as well
        pixels_a = x_a.detach()
        x_a_potential = pixels_a.detach().requires_grad_(True) if want_grad else pixels_a
        online_a = pixels_a if self.has_target else x_a_potential

        out: dict[str, Tensor] = {}
        out["h_a"], out["z_a"] = self.online(online_a)
        out["h_b"], out["z_b"] = self.online(x_b)
        if self.has_predictor:
            out["p_a"], out["p_b"] = self.predictor(out["z_a"]), self.predictor(out["z_b"])
        if self.has_target:
            with torch.no_grad():
                out["ht_b"], out["zt_b"] = self.target(x_b)
            with torch.set_grad_enabled(want_grad):  # gradient w.r.t. the input only (params are frozen)
                out["ht_a"], out["zt_a"] = self.target(x_a_potential)

        loss = self.base_loss(out)
        metrics: dict[str, Tensor] = {"loss_base": loss.detach()}
        if self.use_nrcc:
            x_c = self._make_negative_views(x_a_potential, x_c, out, want_grad)
            reg = self._nrcc_term(out, x_c)
            metrics["loss_nrcc"] = reg.detach()
            loss = loss + reg
        metrics["loss"] = loss.detach()
        return StepOutput(loss, metrics)

    def _make_negative_views(self, x_a: Tensor, x_c: Tensor | None, out: dict[str, Tensor],
                             have_graph: bool) -> Tensor:
        kind = self.nrcc.negatives
        if kind == "augment":
            if x_c is None:
                raise ValueError("method.nrcc.negatives = 'augment' needs a third augmented view from the loader")
            return x_c
        sghmc = self.nrcc.sghmc
        prefix = "t" if self.has_target else ""
        ref = self._potential_features(out[f"h{prefix}_b"], out[f"z{prefix}_b"]).detach()
        network = self._potential_network()

        def grad_at(x: Tensor) -> Tensor:
            # a fresh forward at X: frozen parameters (for the online network: not stepped), BN untouched
            x = x.detach().requires_grad_(True)
            with torch.enable_grad(), preserved_batchnorm_stats(network):
                h, z = network(x)
                potential = alignment_potential(self._potential_features(h, z), ref, sghmc.potential_pairs)
                return self.input_grad_scaler.grad(potential, x)

        first_grad = None
        if have_graph:
            # reuse the forward of x^a the base method already did: only an input-backward is added
            feats = self._potential_features(out[f"h{prefix}_a"], out[f"z{prefix}_a"])
            potential = alignment_potential(feats, ref, sghmc.potential_pairs)
            # the online graph is still needed by the main loss; the target's is not
            first_grad = self.input_grad_scaler.grad(potential, x_a, retain_graph=not self.has_target)
        return negative_views(kind, x_a.detach(), grad_at, sghmc, first_grad=first_grad)

    def _nrcc_term(self, out: dict[str, Tensor], x_c: Tensor) -> Tensor:
        n = out["z_a"].shape[0]
        with torch.no_grad(), preserved_batchnorm_stats(self._negatives_network()):
            _, z_c = self._negatives_network()(x_c)
        v_neg = self._gather(normalized(z_c), grad=False)
        u_a, u_b = self.nrcc_anchors(out)
        pos_a, pos_b = self.nrcc_positives(out)
        offset = row_offset(n) if self.nrcc.gather else 0
        kwargs = dict(weight=self.nrcc.weight, temperature=self.nrcc.temperature,
                      positive_weight=self.nrcc.positive_weight, exclude_self=self.nrcc.exclude_self,
                      offset=offset)
        reg_a = nrcc_regularizer(normalized(u_a), pos_a, v_neg, **kwargs)
        if not self.nrcc.symmetric:
            return reg_a
        reg_b = nrcc_regularizer(normalized(u_b), pos_b, v_neg, **kwargs)
        return 0.5 * (reg_a + reg_b)


class InfoNCEMethod(TwoViewMethod):
    """SimCLR's InfoNCE (+NRCC: u = z^a, v^b = z^b with gradient, v^c = sg z^c, same network)."""

    def base_loss(self, out: dict[str, Tensor]) -> Tensor:
        return info_nce_loss(normalized(out["z_a"]), normalized(out["z_b"]), self.cfg.method.temperature)


class BYOLMethod(TwoViewMethod):
    """BYOL (+NRCC: u = online predictor output, v^b = z̄ of the other view, v^c = z̄^c from the target
    without predictor, paper section 3.6.1)."""

    has_predictor = True
    has_target = True

    def base_loss(self, out: dict[str, Tensor]) -> Tensor:
        return byol_loss(out["p_a"], out["p_b"], out["zt_a"].detach(), out["zt_b"])

    def nrcc_anchors(self, out: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if self.nrcc.anchor == "predictor":
            return out["p_a"], out["p_b"]
        return out["z_a"], out["z_b"]

    def nrcc_positives(self, out: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return (self._gather(normalized(out["zt_b"].detach()), grad=False),
                self._gather(normalized(out["zt_a"].detach()), grad=False))

    def after_optimizer_step(self, progress: float) -> None:
        m = ema_momentum(self.cfg.method.ema_momentum, progress, self.cfg.method.ema_cosine)
        ema_update(self.target, self.online, m)


class SimSiamMethod(TwoViewMethod):
    """SimSiam (+NRCC: u = predictor output, v^b = sg z of the other view, v^c = sg z^c)."""

    has_predictor = True

    def base_loss(self, out: dict[str, Tensor]) -> Tensor:
        return simsiam_loss(out["p_a"], out["p_b"], out["z_a"], out["z_b"])

    def nrcc_anchors(self, out: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return out["p_a"], out["p_b"]

    def nrcc_positives(self, out: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return (self._gather(normalized(out["z_b"].detach()), grad=False),
                self._gather(normalized(out["z_a"].detach()), grad=False))


class BarlowTwinsMethod(TwoViewMethod):
    """Barlow Twins (+NRCC: u = z^a, v^b = z^b with gradient, v^c = sg z^c)."""

    def base_loss(self, out: dict[str, Tensor]) -> Tensor:
        return barlow_twins_loss(out["z_a"], out["z_b"], self.cfg.method.barlow_lambda)
