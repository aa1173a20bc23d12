"""The shared step of the two-view methods (InfoNCE, BYOL, SimSiam, Barlow Twins), with or without NRCC.

One step (BYOL+NRCC, ζ = 1), and why it costs about 1.25x a BYOL step (docs/spec/METHOD.md, "Cost matters"):

1. online forwards of x^a and x^b (with parameter gradients), as BYOL;
2. target forwards of x^a and x^b, as BYOL — x^a's with the *input* requiring grad, so the same forward
   gives h̄(x^a) for the SGHMC potential; h̄(x^b) is the potential's reference, reused as is;
3. one input-only backward gives grad_X U at x^a; one SGHMC step gives x^c;
4. one no-grad target forward of x^c (BatchNorm statistics preserved) gives v^c = z̄^c;
5. loss = BYOL + NRCC(u = online predictor outputs, v^b = z̄ of the other view, v^c).

Methods without a target (InfoNCE, SimSiam, Barlow Twins) take h from the online network, held fixed
for the potential's gradient, reusing the online forward of x^a the same way. Each method lives in the
module of its name and says only its base loss and what NRCC's anchors and positives are for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nrcc_scale.config import Config
from nrcc_scale.methods.base import Encoder, SSLMethod, StepOutput
from nrcc_scale.methods.nrcc import NRCCLoss
from nrcc_scale.methods.precision import InputGradScaler
from nrcc_scale.methods.sghmc import needs_gradient, negative_views, potential_gradient
from nrcc_scale.models.batchnorm import preserved_batchnorm_stats
from nrcc_scale.models.heads import MLPHead


@dataclass
class Encoded:
    """One view through one encoder: backbone features h and the (un-normalised) projection z."""

    h: Tensor
    z: Tensor


@dataclass
class TwoViewForward:
    """The forwards of one step that the base loss and the NRCC term read."""

    online_a: Encoded
    online_b: Encoded
    predicted_a: Tensor | None = None  # predictor outputs (BYOL, SimSiam)
    predicted_b: Tensor | None = None
    target_a: Encoded | None = None  # the EMA target's (BYOL); x^a's carries the input gradient under SGHMC
    target_b: Encoded | None = None


class TwoViewMethod(SSLMethod):
    """Shared step: encode both views, make x^c, add NRCC. Subclasses give the base loss and what NRCC's
    anchors and positives are for them."""

    has_predictor = False
    has_target = False  # set by MomentumMethod

    def __init__(self, cfg: Config, resolution: int) -> None:
        super().__init__(cfg, resolution)
        self.nrcc = cfg.method.nrcc
        self.use_nrcc = cfg.uses_nrcc
        self.needs_third_view = self.use_nrcc and self.nrcc.negatives == "augment"
        self.nrcc_loss = NRCCLoss.from_config(self.nrcc)  # no parameters or buffers: checkpoints unchanged
        if self.has_predictor:
            self.predictor = MLPHead(cfg.model.projector_dim, cfg.model.predictor_hidden, cfg.model.projector_dim)
        # fp16 autocast: the SGHMC input gradient is loss-scaled (a no-op in bf16 and float32)
        self.input_grad_scaler = InputGradScaler()

    # -- hooks for subclasses --------------------------------------------------------------------------
    def base_loss(self, out: TwoViewForward) -> Tensor:
        raise NotImplementedError

    def nrcc_anchors(self, out: TwoViewForward) -> tuple[Tensor, Tensor]:
        """(u^a, u^b): the anchors of the two views (un-normalised)."""
        return out.online_a.z, out.online_b.z

    def nrcc_positives(self, out: TwoViewForward) -> tuple[Tensor, Tensor]:
        """(v^b for anchors of view a, v^b for anchors of view b), un-normalised and this worker's rows;
        detached unless the regularizer should train them (:class:`NRCCLoss` gathers accordingly)."""
        return out.online_b.z, out.online_a.z

    # -- the step --------------------------------------------------------------------------------------
    def predictor_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.predictor.parameters()) if self.has_predictor else []

    def _potential_network(self) -> Encoder:
        return self.target if self.has_target else self.online

    def _potential_views(self, out: TwoViewForward) -> tuple[Encoded, Encoded]:
        """The forwards of x^a and x^b through the potential's network."""
        if self.has_target:
            assert out.target_a is not None and out.target_b is not None
            return out.target_a, out.target_b
        return out.online_a, out.online_b

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

        out = TwoViewForward(Encoded(*self.online(online_a)), Encoded(*self.online(x_b)))
        if self.has_predictor:
            out.predicted_a, out.predicted_b = self.predictor(out.online_a.z), self.predictor(out.online_b.z)
        if self.has_target:
            with torch.no_grad():
                out.target_b = Encoded(*self.target(x_b))
            with torch.set_grad_enabled(want_grad):  # gradient w.r.t. the input only (params are frozen)
                out.target_a = Encoded(*self.target(x_a_potential))

        loss = self.base_loss(out)
        metrics: dict[str, Tensor] = {"loss_base": loss.detach()}
        if self.use_nrcc:
            x_c = self._make_negative_views(x_a_potential, x_c, out, want_grad)
            reg = self._nrcc_term(out, x_c)
            metrics["loss_nrcc"] = reg.detach()
            loss = loss + reg
        metrics["loss"] = loss.detach()
        return StepOutput(loss, metrics)

    def _make_negative_views(self, x_a: Tensor, x_c: Tensor | None, out: TwoViewForward,
                             have_graph: bool) -> Tensor:
        kind = self.nrcc.negatives
        if kind == "augment":
            if x_c is None:
                raise ValueError("method.nrcc.negatives = 'augment' needs a third augmented view from the loader")
            return x_c
        sghmc = self.nrcc.sghmc
        view_a, view_b = self._potential_views(out)
        ref = self._potential_features(view_b.h, view_b.z).detach()
        network = self._potential_network()

        def features(x: Tensor) -> Tensor:
            return self._potential_features(*network(x))

        def grad_at(x: Tensor) -> Tensor:
            # a fresh forward at X: frozen parameters (for the online network: not stepped), BN untouched
            with preserved_batchnorm_stats(network):
                return potential_gradient(features, x, ref, sghmc.potential_pairs, self.input_grad_scaler)

        first_grad = None
        if have_graph:
            # reuse the forward of x^a the base method already did: only an input-backward is added; the
            # online graph is still needed by the main loss, the target's is not
            first_grad = potential_gradient(self._potential_features(view_a.h, view_a.z), x_a, ref,
                                            sghmc.potential_pairs, self.input_grad_scaler,
                                            retain_graph=not self.has_target)
        return negative_views(kind, x_a.detach(), grad_at, sghmc, first_grad=first_grad)

    def _nrcc_term(self, out: TwoViewForward, x_c: Tensor) -> Tensor:
        network = self._negatives_network()
        with torch.no_grad(), preserved_batchnorm_stats(network):
            _, z_c = network(x_c)
        return self.nrcc_loss(self.nrcc_anchors(out), self.nrcc_positives(out), z_c)
