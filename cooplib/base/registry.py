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

Each option's value is also checked, before anything is built (``check_options``, which
``build`` and ``RunConfig`` call), so a bad value is one ``ConfigError`` line naming the
option and what it accepts. The type comes free from the signature: the default's type
(or, for a ``None`` default, the annotation, e.g. ``str | None``): an int default takes an
int only (not 1.7, not True), a float default an int or a float, finite; a bool default
true or false only; a str default a string; a tuple/list default a list or tuple whose
items have the type of the default's items. Ranges and choices are declared in one place,
the decorator::

    @METHODS.register("sandwich", ranges={"n_random": (0, None), "temperature": "(0, inf)",
                                         "factors": "(0, 1)"}, choices={"spacing": SPACINGS})

A range is ``(low, high)``, both ends included, ``None`` for no bound, or interval text
(``"(0, 1]"``, ``"[0, inf)"``) for an excluded end; on a list option it applies to each
item. ``check(options)`` receives every option (defaults filled in) for rules between
options (e.g. coop_depth's ``deploy_factor`` must be one of its ``factors``) and raises
``ConfigError``: ``RunConfig`` applies it on construction (``check_options(rules=True)``);
``build`` leaves such rules to the factory / Learner, which applies the same function in
its own order (after checks that need the built network).
"""
from __future__ import annotations

import inspect
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from .errors import ConfigError, suggest

Factory = Callable[..., Any]
#: Resolves a name outside the registered ones (e.g. any ``resnet{6n+2}``) to a factory,
#: or returns None when the name is not of its family.
Family = Callable[[str], Optional[Factory]]
#: a declared range: (low, high) with both ends included (None: unbounded), or interval
#: text such as "(0, 1]" or "[0, inf)"
RangeSpec = Any


@dataclass(frozen=True)
class Interval:
    """A range of numbers, each end included or not; ``None`` = unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    @classmethod
    def of(cls, spec: RangeSpec) -> "Interval":
        if isinstance(spec, Interval):
            return spec
        if isinstance(spec, str):
            m = re.fullmatch(r"\s*([\[(])\s*([^,]+?)\s*,\s*([^,]+?)\s*([\])])\s*", spec)
            if not m:
                raise ValueError(f"range {spec!r} is not interval text like '(0, 1]' or '[0, inf)'")
            lo, hi = (None if v.lstrip("+-") == "inf" else float(v) for v in (m[2], m[3]))
            return cls(lo, hi, m[1] == "(", m[4] == ")")
        if isinstance(spec, (tuple, list)) and len(spec) == 2:
            return cls(*spec)
        raise ValueError(f"range {spec!r} must be (low, high) or interval text like '(0, 1]'")

    def __contains__(self, v: float) -> bool:
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return not (self.high is not None and (v >= self.high if self.high_open else v > self.high))

    def describe(self) -> str:
        """'>= 0', '> 0', '<= 1' or 'in (0, 1]'."""
        lo, hi = _num(self.low), _num(self.high)
        if self.high is None:
            return "" if self.low is None else f"{'>' if self.low_open else '>='} {lo}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {hi}"
        return f"in {'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"


def _num(v: float | None) -> str:
    return "" if v is None else (str(int(v)) if float(v).is_integer() else repr(v))


@dataclass
class OptionSpec:
    """What a factory accepts per option: its default, type, range and choices."""

    ranges: dict[str, Interval] = field(default_factory=dict)
    choices: dict[str, tuple] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], None] | None = None


class Registry:
    """One kind of named thing: ``register`` adds, ``get``/``build`` look up, ``names`` lists."""

    def __init__(self, kind: str, normalize: Callable[[str], str] = str) -> None:
        self.kind = kind
        self.normalize = normalize  # spelling variants a user may type, e.g. "ResNet-32"
        self._factories: dict[str, Factory] = {}
        self._families: list[Family] = []
        self._specs: dict[Factory, OptionSpec] = {}

    def register(self, name: str, *aliases: str, ranges: Mapping[str, RangeSpec] | None = None,
                 choices: Mapping[str, Sequence] | None = None,
                 check: Callable[[dict[str, Any]], None] | None = None) -> Callable[[Factory], Factory]:
        """Decorator: make ``name`` (and each alias) build with the decorated factory.

        ``ranges`` / ``choices``: per option, the numbers / values it accepts; ``check``:
        rules between options (see the module doc). Types come from the signature."""

        def deco(factory: Factory) -> Factory:
            if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values()):
                raise TypeError(f"{self.kind} {name!r}: list the factory's options as keyword-only "
                                f"parameters (after `*`) instead of **kwargs")
            accepted = _keyword_only(factory)
            for what, declared in (("range", ranges or {}), ("choice list", choices or {})):
                stray = [k for k in declared if k not in accepted]
                if stray:
                    raise ValueError(f"{self.kind} {name!r} declares a {what} for {stray[0]!r}, which is not one "
                                     f"of its options {accepted}")
            spec = OptionSpec({k: Interval.of(v) for k, v in (ranges or {}).items()},
                              {k: tuple(v) for k, v in (choices or {}).items()}, check)
            keys = list(map(self.normalize, (name, *aliases)))  # found as `get` will look
            for key in keys:
                if key in self._factories:
                    raise ValueError(f"{self.kind} {key!r} is already registered")
            for key in keys:
                self._factories[key] = factory
            self._specs[factory] = spec
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

    def canonical(self, name: str) -> str | None:
        """The registered spelling of ``name`` (``"ResNet-8"`` -> ``"resnet8"``), or None
        when no factory answers to it."""
        key = self.normalize(name)
        if key in self._factories or any(resolve(key) is not None for resolve in self._families):
            return key
        return None

    def check_options(self, name: str, options: Mapping[str, Any], rules: bool = True) -> None:
        """Refuse, with one ConfigError line, an option ``name`` does not have or a value
        of the wrong type, out of its range or not among its choices, and (``rules``) what
        the declared ``check`` between options refuses; builds nothing."""
        factory = self.get(name)
        accepted = _keyword_only(factory)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigError(f"{self.kind} {name!r} has no option(s) {unknown}; it accepts "
                              f"{accepted or 'none'}{suggest(unknown[0], accepted)}")
        spec = self._specs.get(factory, OptionSpec())
        params = inspect.signature(factory).parameters
        hints = _hints(factory)
        for key, value in options.items():
            problem = _value_problem(value, params[key].default, hints.get(key), spec.ranges.get(key),
                                     spec.choices.get(key))
            if problem:
                verb = "" if problem.startswith("hold ") else "be "  # a list's items: "must hold numbers in ..."
                raise ConfigError(f"{self.kind} {name!r} option {key} must {verb}{problem}")
        if rules and spec.check is not None:
            spec.check({**{p.name: p.default for p in params.values() if p.kind is p.KEYWORD_ONLY}, **options})

    def build(self, name: str, /, *args: Any, **options: Any) -> Any:
        """``factory(*args, **options)`` after checking every option (``check_options``)."""
        self.check_options(name, options, rules=False)
        return self.get(name)(*args, **options)

    def _unknown(self, name: str, key: str) -> ConfigError:
        return ConfigError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
                           f"{suggest(key, self.names())}")


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _hints(factory: Factory) -> dict[str, Any]:
    try:
        return typing.get_type_hints(factory)
    except Exception:  # an annotation that does not resolve: no type from it
        return {}


def _optional_type(hint: Any) -> type | None:
    """X for an annotation ``X | None`` (X a bool, int, float or str), else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and args[0] in (bool, int, float, str):
            return args[0]
    return None


_WHAT = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _scalar_problem(value: Any, kind: type, interval: Interval | None, choices: tuple | None) -> str | None:
    """What is wrong with one value of type ``kind`` ('an integer >= 0, got -1'), or None."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    what = _WHAT.get(kind, f"a {kind.__name__}")
    if choices is not None and kind is str:
        if not ok or value not in choices:
            return f"one of {choices}, got {value!r}{suggest(value, choices) if ok else f' ({type(value).__name__})'}"
        return None
    if not ok:
        return f"{what}, got {value!r} ({type(value).__name__}){_quoted(value) if kind in (int, float) else ''}"
    if kind in (int, float):
        if not math.isfinite(value):
            return f"a finite number{' ' + interval.describe() if interval and interval.describe() else ''}, got {value!r}"
        if interval is not None and value not in interval:
            return f"{what} {interval.describe()}, got {value!r}"
    if choices is not None and value not in choices:
        return f"one of {choices}, got {value!r}"
    return None


def _quoted(value: Any) -> str:
    if isinstance(value, str):
        try:
            float(value)
            return " (remove the quotes)"
        except ValueError:
            pass
    return ""


def _value_problem(value: Any, default: Any, hint: Any, interval: Interval | None, choices: tuple | None) -> str | None:
    """What is wrong with ``value`` for an option whose default is ``default``, or None."""
    if default is inspect.Parameter.empty:
        return None
    if default is None:
        kind = _optional_type(hint)
        if value is None or kind is None:
            return None
        problem = _scalar_problem(value, kind, interval, choices)
        if problem is None:
            return None
        head, got = problem.split(", got ", 1)
        return f"{head} (or null), got {got}" if head != _WHAT[kind] or kind is not str else f"a string or null, got {got}"
    if isinstance(default, (tuple, list)):
        example = list(default) or [0.3, 0.6]
        if not isinstance(value, (tuple, list)):
            return f"a list like {example}, got {value!r} ({type(value).__name__})"
        kinds = {type(v) for v in default}
        kind = float if kinds <= {int, float} and float in kinds else (kinds.pop() if len(kinds) == 1 else None)
        if kind is None:
            return None
        for item in value:
            problem = _scalar_problem(item, kind, interval, choices)
            if problem:
                need = {float: "numbers", int: "integers", bool: "true or false", str: "strings"}.get(kind, kind.__name__)
                bound = f" {interval.describe()}" if interval and interval.describe() else ""
                return f"hold {need}{bound}, got {item!r}"
        return None
    kind = type(default) if type(default) in (bool, int, float, str) else None
    if kind is None:
        return None
    return _scalar_problem(value, kind, interval, choices)


def _keyword_only(factory: Factory) -> list[str]:
    return [p.name for p in inspect.signature(factory).parameters.values() if p.kind is p.KEYWORD_ONLY]


METHODS = Registry("method")
MODELS = Registry("model", normalize=lambda name: name.lower().replace("-", ""))
DATASETS = Registry("dataset", normalize=lambda name: name.lower().replace("_", "-"))
