"""Registry of Learners: `build(method, model, num_classes, in_channels, **args)`.

A method is a Learner (heads + loss); all of them train with `cooplib.train.fit`.
"""
from __future__ import annotations

import inspect
from typing import Callable

from .. import models
from ..errors import suggest
from .base import Learner, TrainState
from .baseline import Baseline
from .dml import DML, build_dml
from .one import ONE, build_one


def _baseline(model: str, num_classes: int, in_channels: int, **args) -> Learner:
    return Baseline(models.build(model, num_classes, in_channels), **args)


METHODS: dict[str, tuple[Callable[..., Learner], type]] = {
    "baseline": (_baseline, Baseline),
    "dml": (build_dml, DML),
    "one": (build_one, ONE),
}


def _accepted_args(factory: Callable, cls: type) -> set[str]:
    """Keyword arguments a method takes: its factory's own, plus the Learner's if forwarded."""
    params = inspect.signature(factory).parameters
    own = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    own -= {"model", "num_classes", "in_channels"}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        own |= set(inspect.signature(cls.__init__).parameters) - {"self", "net", "peers", "args", "kwargs"} | own
    return own


def names() -> list[str]:
    return sorted(METHODS)


def build(method: str, model: str, num_classes: int, in_channels: int = 3, **args) -> Learner:
    """Build the Learner `method` around architecture `model`; bad names/args raise ValueError."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(names())}{suggest(method, METHODS)}")
    factory, cls = METHODS[method]
    accepted = _accepted_args(factory, cls)
    unknown = set(args) - accepted
    if unknown:
        bad = sorted(unknown)[0]
        raise ValueError(
            f"method {method!r} has no argument(s) {sorted(unknown)}; it accepts {sorted(accepted)}"
            f"{suggest(bad, accepted)}"
        )
    return factory(model, num_classes, in_channels, **args)


__all__ = ["Learner", "TrainState", "Baseline", "DML", "ONE", "build", "names", "METHODS"]
