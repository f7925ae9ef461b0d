"""RunConfig: everything that defines a run, validated on construction.

One flat dataclass so that notebook parameters, config.json and the columns of
`runs.load_runs` all use the same names. Defaults are the ONE paper's CIFAR recipe
(Lan et al., NeurIPS 2018, section 4): SGD Nesterov 0.9, lr 0.1 -> x0.1 at 50% and 75%
of 300 epochs, batch 128, weight decay 1e-4 (the run scripts of the ONE reference code,
github.com/Lan1991Xu/ONE_NeurIPS2018).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from ..base.errors import ConfigError, suggest

SCHEDULES = ("step", "cosine", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
AUGMENTS = ("default", "none", "crop", "flip", "crop+flip")

#: the device names `runtime.resolve_device` accepts
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
#: fields whose value may be None (what None means is in the field's comment)
OPTIONAL = frozenset({"data_root", "train_size", "test_size", "init_from", "channels_last", "sync_bn"})

#: fields added after run directories were first named, with their defaults: hashed
#: only when set otherwise, so earlier run directories keep their names
LATER_DEFAULTS = {"sync_bn": None, "grad_ratio_exclude": "none", "grad_ratio_ema": 0.0, "eval_every": 1}

#: fields that do not change what a run computes (ignored when resuming / naming runs)
COSMETIC = frozenset({"progress", "tensorboard"})

#: seeds every generator a run seeds accepts (torch, the loader's, numpy's)
SEED_RANGE = (0, 2**32 - 1)


@dataclass
class RunConfig:
    # what is trained
    method: str = "baseline"
    method_args: dict = field(default_factory=dict)
    model: str = "resnet32"
    dataset: str = "cifar100"
    dataset_args: dict = field(default_factory=dict)  # e.g. {"extra": True} for svhn
    data_root: str | None = None  # None: $COOPLIB_DATA or ~/.cache/cooplib/data
    download: bool = False
    train_size: int | None = None  # class-stratified subset; None = all
    test_size: int | None = None
    augment: str = "default"  # the dataset's paper default, or none/crop/flip/crop+flip
    # how it is trained
    epochs: int = 300
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    schedule: str = "step"
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of `epochs` where lr *= gamma
    gamma: float = 0.1
    grad_ratio_lr: bool = False  # per-tensor lr x clip(mean|grad last layer| / mean|grad|) (expand.py)
    grad_ratio_clip: tuple[float, float] = (0.1, 20.0)
    grad_ratio_exclude: str = "none"  # none, pre_bn (biases before a BatchNorm), pre_bn+bn (and BN affine)
    grad_ratio_ema: float = 0.0  # EMA factor of the log ratio over steps (0: the current step's ratio)
    seed: int = 0
    # evaluate the test set after every `eval_every`-th epoch and after the last: on a CPU
    # a full test pass costs about a third of a training epoch, and the training error is
    # still recorded every epoch (the convergence slope reads it)
    eval_every: int = 1
    # where the weights start: a run directory whose final weights initialise this run
    # (Learner.init_from: strict load, or e.g. ONE's branch expansion; momentum carried)
    init_from: str | None = None
    # where and how fast
    device: str = "auto"  # auto = cuda if available else cpu
    # auto = bf16 autocast on CUDA and on a CPU with native bf16 (avx512_bf16/amx_bf16:
    # ~2x faster there; a CPU without it emulates bf16, 10x slower, and keeps fp32;
    # $COOPLIB_CPU_BF16=0/1 overrides the detection). fp32: precision="fp32".
    # The resolved value is recorded in config.json ("resolved") and kept on resume;
    # "auto" itself is what names the run, so run names do not change.
    precision: str = "auto"
    channels_last: bool | None = None  # None = on for CUDA and CPU (faster there in fp32 and bf16), off on MPS
    sync_bn: bool | None = None  # several processes (cooplib.engine.distributed): BN over the global batch; None = on CUDA
    compile: bool = False
    deterministic: bool = False
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        self._check_types()
        self.milestones = tuple(float(m) for m in self.milestones)
        self.grad_ratio_clip = tuple(float(c) for c in self.grad_ratio_clip)
        self._normalise_names()
        self._check()

    def _normalise_names(self) -> None:
        """The registered spelling of the model and dataset ("resnet-8" -> "resnet8",
        "Digits" -> "digits"), so one run is never named (and trained) twice. A name no
        registry knows is kept as typed: building it is the error, with a did-you-mean
        (data passed to `train.fit` directly may carry any name)."""
        from ..data import DATASETS
        from ..models import MODELS

        parts = [p.strip() for p in self.model.split("+")] if "+" in self.model else [self.model]
        canon = [MODELS.canonical(p) for p in parts]
        if all(canon):
            self.model = "+".join(canon)
        self.dataset = DATASETS.canonical(self.dataset) or self.dataset

    def _check_types(self) -> None:
        """Each field has the type of its default: a string where a number belongs (a
        quoted value, or YAML's `5e-4`, which it reads as text) is named, not a TypeError."""
        for f in fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            if value is None and f.name in OPTIONAL:
                continue
            kind = type(default) if default is not None else {"channels_last": bool, "sync_bn": bool}.get(f.name, str)
            if f.name in ("train_size", "test_size"):
                kind = int
            if kind is float:
                ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
            elif kind is int:
                ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
            elif kind is tuple:
                ok = isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                what = "a list of numbers"
            else:
                ok, what = isinstance(value, kind), {bool: "true or false", str: "a string", dict: "a mapping"}[kind]
            if not ok:
                hint = " (remove the quotes; YAML reads 5e-4 without a dot as text: write 5.0e-4)" if _numeric(value) else ""
                raise ConfigError(f"{f.name} must be {what}, got {value!r} ({type(value).__name__}){hint}")

    def _check(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        self._check_types()
        need(bool(DEVICE_PATTERN.match(self.device)),
             f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}{suggest(self.device, ('auto', 'cpu', 'cuda', 'mps'))}")

        need(isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be an integer >= 1, got {self.epochs!r}")
        need(self.eval_every >= 1, f"eval_every must be an integer >= 1 (1: evaluate every epoch), got {self.eval_every!r}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        need(SEED_RANGE[0] <= self.seed <= SEED_RANGE[1], f"seed must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {self.seed!r}")
        for name in ("lr", "momentum", "weight_decay", "gamma", "grad_ratio_ema"):
            v = getattr(self, name)
            need(math.isfinite(v), f"{name} must be a finite number, got {v!r}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}{suggest(self.schedule, SCHEDULES)}")
        need(all(0 < m < 1 for m in self.milestones), f"milestones are fractions of the epochs in (0, 1), got {self.milestones!r}")
        need(all(a < b for a, b in zip(self.milestones, self.milestones[1:])),
             f"milestones must be strictly increasing fractions in (0, 1), got {self.milestones!r}")
        need(0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma!r}")
        if self.schedule == "step":
            self._check_milestone_epochs()
        need(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}{suggest(self.precision, PRECISIONS)}")
        need(self.augment in AUGMENTS, f"augment must be one of {AUGMENTS}, got {self.augment!r}{suggest(self.augment, AUGMENTS)}")
        need(not (self.nesterov and self.momentum == 0), "nesterov=True needs momentum > 0")
        lo, hi = self.grad_ratio_clip if len(self.grad_ratio_clip) == 2 else (0, -1)
        need(0 < lo <= hi, f"grad_ratio_clip must be (low, high) with 0 < low <= high, got {self.grad_ratio_clip!r}")
        from .gradratio import EXCLUDE

        need(self.grad_ratio_exclude in EXCLUDE, f"grad_ratio_exclude must be one of {EXCLUDE}, got "
             f"{self.grad_ratio_exclude!r}{suggest(self.grad_ratio_exclude, EXCLUDE)}")
        need(0 <= self.grad_ratio_ema < 1, f"grad_ratio_ema must be in [0, 1), got {self.grad_ratio_ema!r}")
        for name in ("train_size", "test_size"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, int) and v > 0), f"{name} must be None or a positive integer, got {v!r}")
        self._check_methods()

    def _check_milestone_epochs(self) -> None:
        """Each step milestone must drop the lr inside the run: `optim.lr_factor` drops at
        epoch round(m * epochs), so epoch 0 would train the whole run below `lr` from the
        start (epochs=1 with 0.5/0.75 trained at 0.01, not 0.1), and epoch >= epochs never
        applies the milestone (silently)."""
        for m in self.milestones:
            e = round(m * self.epochs)
            if 1 <= e <= self.epochs - 1:
                continue
            why = "epoch 0, so the lr drops before the first epoch" if e < 1 else \
                f"epoch {e}, after the last epoch ({self.epochs - 1}), so it never applies"
            allowed = ("no epoch is left for a milestone: use milestones=[]" if self.epochs == 1
                       else f"a milestone must fall on an epoch in 1..{self.epochs - 1}")
            raise ConfigError(f"milestone {m} of epochs={self.epochs} falls on {why} (round({m} * {self.epochs})); "
                              f"{allowed}, or schedule='constant' or 'cosine'")

    def _check_methods(self) -> None:
        """The method and its options (type, range, choices; `registry.Registry.check_options`),
        and the options of a registered dataset, before anything is built."""
        from ..data import DATASETS
        from ..methods import METHODS

        METHODS.check_options(self.method, self.method_args)
        if DATASETS.canonical(self.dataset):
            DATASETS.check_options(self.dataset, self.dataset_args)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """Build from a plain dict; an unknown key is an error with a suggestion."""
        known = {f.name for f in fields(cls)}
        unknown = [k for k in d if k not in known]
        if unknown:
            raise ConfigError(f"unknown run parameter {unknown[0]!r}{suggest(unknown[0], known)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    @classmethod
    def from_namespace(cls, namespace: dict[str, Any], **overrides: Any) -> "RunConfig":
        """A config from a notebook's parameters: every variable named like a field (e.g.
        `globals()` after the parameters cell), then `overrides`. One call instead of
        spelling out each parameter."""
        names = {f.name for f in fields(cls)}
        return cls.from_dict({**{k: v for k, v in namespace.items() if k in names}, **overrides})

    def replace(self, **changes: Any) -> "RunConfig":
        known = {f.name for f in fields(self)}
        for k in changes:
            if k not in known:
                raise ConfigError(f"unknown run parameter {k!r}{suggest(k, known)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        d["grad_ratio_clip"] = list(self.grad_ratio_clip)
        return d

    def semantic(self) -> dict[str, Any]:
        """The fields that define what the run computes (cosmetic ones removed)."""
        return {k: v for k, v in self.to_dict().items() if k not in COSMETIC}

    def digest(self) -> str:
        """Short hash of `semantic()`, used in run directory names."""
        named = {k: v for k, v in self.semantic().items() if not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}
        blob = json.dumps(named, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    def run_name(self) -> str:
        return f"{self.method}-{self.model}-{self.dataset}-s{self.seed}-{self.digest()}"


def _numeric(value: Any) -> bool:
    try:
        return isinstance(value, str) and bool(float(value) == float(value))
    except ValueError:
        return False


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Human-readable list of `key: a -> b` for keys whose values differ."""
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return out
