"""Name -> factory registries: what a RunConfig's ``method``, ``model`` and ``dataset`` name.

Every registrable thing is a factory function with a decorator next to it::

    @METHODS.register("baseline")
    def build_baseline(model: str, num_classes: int, in_channels: int = 3, *,
                       label_smoothing: float = 0.0) -> Baseline:
        ...

The positional parameters are what the caller always passes (for a method: the model
name, the class count and the input channels); the keyword-only ones, after ``*``, are
the options a user may set (``RunConfig.method_args`` / ``dataset_args``). Options are
read from the signature, so a misspelt one is refused with a did-you-mean before anything
is built (papermill only warns about an unknown notebook parameter). A factory may not
take ``**kwargs``: its options would be invisible.
"""
from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Optional

from .errors import ConfigError, suggest

Factory = Callable[..., Any]
#: Resolves a name outside the registered ones (e.g. any ``resnet{6n+2}``) to a factory,
#: or returns None when the name is not of its family.
Family = Callable[[str], Optional[Factory]]


class Registry:
    """One kind of named thing: ``register`` adds, ``get``/``build`` look up, ``names`` lists."""

    def __init__(self, kind: str, normalize: Callable[[str], str] = str) -> None:
        self.kind = kind
        self.normalize = normalize  # spelling variants a user may type, e.g. "ResNet-32"
        self._factories: dict[str, Factory] = {}
        self._families: list[Family] = []

    def register(self, name: str, *aliases: str) -> Callable[[Factory], Factory]:
        """Decorator: make ``name`` (and each alias) build with the decorated factory."""

        def deco(factory: Factory) -> Factory:
            if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values()):
                raise TypeError(f"{self.kind} {name!r}: list the factory's options as keyword-only "
                                f"parameters (after `*`) instead of **kwargs")
            for key in map(self.normalize, (name, *aliases)):  # found as `get` will look
                if key in self._factories:
                    raise ValueError(f"{self.kind} {key!r} is already registered")
                self._factories[key] = factory
            return factory

        return deco

    def register_family(self, resolve: Family) -> Family:
        """Decorator: ``resolve(name)`` builds names no list can hold (a depth pattern)."""
        self._families.append(resolve)
        return resolve

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test's toy, say); its aliases stay."""
        key = self.normalize(name)
        if key not in self._factories:
            raise self._unknown(name, key)
        del self._factories[key]

    def names(self) -> list[str]:
        """Registered names and aliases, numbers in numeric order (resnet8 before resnet14)."""
        return sorted(self._factories, key=_natural)

    def get(self, name: str) -> Factory:
        """The factory of ``name``; an unknown name raises ConfigError with a suggestion."""
        key = self.normalize(name)
        if key in self._factories:
            return self._factories[key]
        for resolve in self._families:
            factory = resolve(key)
            if factory is not None:
                return factory
        raise self._unknown(name, key)

    def options(self, name: str) -> list[str]:
        """What a user may set for ``name``: its factory's keyword-only parameters."""
        return _keyword_only(self.get(name))

    def build(self, name: str, *args: Any, **options: Any) -> Any:
        """``factory(*args, **options)`` after checking every option against the signature."""
        factory = self.get(name)
        accepted = _keyword_only(factory)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigError(f"{self.kind} {name!r} has no option(s) {unknown}; it accepts "
                              f"{accepted or 'none'}{suggest(unknown[0], accepted)}")
        return factory(*args, **options)

    def _unknown(self, name: str, key: str) -> ConfigError:
        return ConfigError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
                           f"{suggest(key, self.names())}")


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _keyword_only(factory: Factory) -> list[str]:
    return [p.name for p in inspect.signature(factory).parameters.values() if p.kind is p.KEYWORD_ONLY]


METHODS = Registry("method")
MODELS = Registry("model", normalize=lambda name: name.lower().replace("-", ""))
DATASETS = Registry("dataset", normalize=lambda name: name.lower().replace("_", "-"))
