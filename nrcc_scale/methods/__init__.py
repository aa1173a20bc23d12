"""Self-supervised objectives. ``build_method(cfg, resolution)`` returns the configured one."""

from __future__ import annotations

from nrcc_scale.config import Config
from nrcc_scale.methods.barlow_twins import BarlowTwinsMethod
from nrcc_scale.methods.base import SSLMethod, StepOutput
from nrcc_scale.methods.byol import BYOLMethod
from nrcc_scale.methods.cueco import CueCoMethod
from nrcc_scale.methods.infonce import InfoNCEMethod
from nrcc_scale.methods.simsiam import SimSiamMethod

METHOD_CLASSES: dict[str, type[SSLMethod]] = {
    "infonce": InfoNCEMethod,
    "byol": BYOLMethod,
    "simsiam": SimSiamMethod,
    "barlow_twins": BarlowTwinsMethod,
    "cueco": CueCoMethod,
}


def build_method(cfg: Config, resolution: int) -> SSLMethod:
    return METHOD_CLASSES[cfg.method.name](cfg, resolution)


__all__ = ["METHOD_CLASSES", "SSLMethod", "StepOutput", "build_method"]
