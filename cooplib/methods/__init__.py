"""Learners by name: `build(method, model, num_classes, in_channels, **options)`.
May import cooplib.models, data, losses and base; never the engine (a teacher run arrives through `kd.use_teacher_loader`).

A method is a Learner (heads + loss); all of them train with `cooplib.engine.train.fit`. Each
method's file defines its Learner and registers a factory with `@METHODS.register(name)`
(see book/adding_a_method.md); importing the file here is what makes the name known.
"""
from __future__ import annotations

from ..base.registry import METHODS
from .base import Learner, TrainState
from .baseline import Baseline
from .dml import DML
from .kd import Distill  # noqa: F401  (registers student, kd, fitnet, at, ft, rkd, nst, pkt)
from .one import ONE
from . import coop_depth, multi_exit, sandwich  # noqa: F401  (cooperative-depth chapter)
from . import cl_ilr, kdcl, mcl_okd, okddip, pcl  # noqa: F401  (online KD beside ONE and DML)
from . import crd, dkd  # noqa: F401  (registers crd and dkd as KD kinds)

register = METHODS.register


def names() -> list[str]:
    return METHODS.names()


def build(method: str, model: str, num_classes: int, in_channels: int = 3, **options) -> Learner:
    """Build the Learner `method` around architecture `model`; bad names/options raise ConfigError."""
    return METHODS.build(method, model, num_classes, in_channels, **options)


__all__ = ["Learner", "TrainState", "Baseline", "DML", "ONE", "METHODS", "build", "names", "register"]
