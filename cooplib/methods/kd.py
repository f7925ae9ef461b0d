"""Offline knowledge distillation: a student learns from a frozen teacher run.

One Learner, `Distill`, holds the student network, the teacher and the method's adapters;
each method is one loss term (`cooplib.losses`) on named features read by forward hooks
(`cooplib.models.taps`), so neither network is edited. Registered methods (keyword-only options):

=========  ================================  ===============================================
name       term (cooplib.losses)             features; published weight beta
=========  ================================  ===============================================
student    none (the pure student)           --
kd         T^2 KL, T = 4 (Hinton et al.)     logits; RepDistiller/mdistiller 0.1 CE + 0.9 KD
fitnet     hint_mse after ConvReg            stage 2 (``layer2``, RepDistiller hint_layer 2); 100
at         attention_transfer, p = 2         ``layer1..3``, summed; 1000
ft         factor_transfer (p = 1)           ``layer3`` via paraphraser/translator; 200 (1000)
rkd        25 distance + 50 angle            pooled features (``pool``); 1
nst        nst (poly-kernel MMD)             ``layer1..3``, summed; 50
pkt        pkt                               pooled features; 30000
=========  ================================  ===============================================

(``crd`` and ``dkd`` are kinds too, each in its module: `cooplib.methods.crd`,
`cooplib.methods.dkd`, joined through `register_kind`.) AT, NST and FT pool the larger of
two maps to the smaller (RepDistiller's adaptive average pooling, `losses.match_spatial`).

The weights are those of RepDistiller's README and scripts (HobbitLong/RepDistiller,
``train_student.py``: loss = gamma CE + alpha KD + beta L_method; KD runs use gamma 0.1,
alpha 0.9, T 4; every other method gamma 1, alpha 0 and the beta above), which mdistiller
(megvii-research/mdistiller, ``configs/cifar100/*.yaml``) keeps. Two conventions:

- ``convention="repdistiller"`` (default): gamma CE + alpha KD + beta L as above, no label
  smoothing.
- ``convention="seed"``: the public seed experiment this chapter repairs:
  ``(1 - alpha) CE_ls + alpha * D`` with alpha 0.5 and label smoothing 0.1, where D is
  T^2 KL for ``kd`` and beta * L_method for the others (our reading: its "distill" term
  is the method's loss at its published weight).

torchdistill's ``KDLoss`` (torchdistill/losses/mid_level.py) returns
``alpha * CE + (1 - alpha) * T^2 KL``: its ``alpha`` weights the *hard* loss, the reverse
of the convention above; ``torchdistill_kd`` below states the mapping.

The teacher: ``teacher=<run dir>`` of a complete run of any method, trained on the
student's dataset (same name, class count and input channels: anything else is a
`ConfigError` naming both before training), rebuilt through
`cooplib.engine.experiment.load_learner` (safetensors, checksummed), its deployed network kept
frozen: ``requires_grad=False``, eval-mode BatchNorm whatever ``train()`` is called with,
forward under ``no_grad``, and only in training (evaluation never runs it). Its weights
are part of the student's state dict (so a student run reloads strictly) but never get a
gradient, so SGD leaves them untouched. The teacher's test top-1 (its run's last epoch,
primary head) is recorded in every epoch of the student's run as the constant loss part
``test_top1/teacher`` (not added to the total), i.e. ``train/test_top1/teacher`` in
metrics.jsonl and ``last/train/test_top1/teacher`` in `runs.load_runs`. Loss parts are
named ``term/head`` as in every method: ``ce/net``, ``kd/net``, ``at/net``, ...

The student's run records its teacher's identity when it starts (config.json
``provenance.teacher``: run name and path, the sha256 of the teacher's last weights as
its commit.json holds it, its dataset, classes, channels, method, model and test top-1;
`cooplib.engine.experiment.run_identity`). Resuming after the teacher changed is an error
before training. A complete student is its own record: `experiment.load_learner` builds
it with an untrained teacher of the recorded shape (`recorded_teacher`) and loads the
student's weights (which hold the teacher's), so it loads with the teacher moved or gone.

Options are checked before anything is built (one `ConfigError` naming the option and
its range): ``weight`` >= 0, ``alpha`` in [0, 1], ``label_smoothing`` in [0, 1),
``temperature`` > 0, ``warmup_epochs`` an integer >= 0, ``teacher`` a run directory path.

Adapters (FitNets' regressor, FT's paraphraser and translator) belong to the Learner and
are trained with it; ``deployable()`` returns the plain student network, so TeCost and
exported weights never contain them.

FT follows HobbitLong/RepDistiller@b84f547: its loss (distiller_zoo/FT.py, the normalised
channel mean of the squared factor) and weight 200, its ``Paraphraser`` (three 3x3 convs
with bias, no BN, LeakyReLU 0.1, rate k = 0.5, and a three-layer transposed-conv decoder)
and ``Translator`` (the same with BN), models/util.py. ``ft_convention="torchdistill"``
takes torchdistill's loss (losses/mid_level.py ``FTLoss``: the normalised flattened
factor, as the FT authors' code) and weight (1000, its official ImageNet config).
RepDistiller pre-trains the paraphraser for 30 epochs (``--init_epochs``; helper/pretrain.py:
reconstruction MSE, SGD lr 0.01, the student in eval mode and not trained) before the
student's 240. Here the first ``warmup_epochs`` of the student's own run do it: the total
is the reconstruction MSE alone, so the student and the translator get no gradient (SGD
skips them: no step, no weight decay); afterwards the paraphraser is frozen (eval mode,
no gradient) and the FT term is on. ``warmup_epochs=None`` (default) gives it
RepDistiller's share of the run, 30 of 30 + 240 epochs, rounded, at least 1 and fewer
than the run (`ft_warmup_epochs`). Remaining deviations: the paraphraser learns at the
run's scheduled lr (one optimizer per run: no separate 0.01), and the warm-up forward
passes update the student's BatchNorm statistics.

FitNets' regressor is RepDistiller's ``ConvReg`` (models/util.py; mdistiller's
distillers/_common.py is the same): for equal sizes a 1x1 conv with bias + BN + ReLU.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .. import losses, models
from ..base.errors import ConfigError
from ..base.registry import METHODS
from ..models.taps import Taps
from .base import Learner, TrainState

CONVENTIONS = ("repdistiller", "seed")
#: RepDistiller's beta per feature method (train_student.py / README), KD's alpha
PUBLISHED_WEIGHT = {"kd": 0.9, "fitnet": 100.0, "at": 1000.0, "ft": 200.0, "rkd": 1.0, "nst": 50.0, "pkt": 30000.0}
#: FT's weight under ``ft_convention="torchdistill"``: torchdistill's official FT config
#: (configs/official/ilsvrc2012/yoshitomo-matsubara/rrpr2020/ft-resnet18_from_resnet34.yaml,
#: ``factor_transfer`` weight 1000)
FT_TORCHDISTILL_WEIGHT = 1000.0
#: RepDistiller's paraphraser pre-training (train_student.py ``--init_epochs`` 30 before its
#: 240 epochs; helper/pretrain.py lr 0.01 for ResNet/WRN students)
FT_INIT_EPOCHS, FT_MAIN_EPOCHS = 30, 240
#: which named modules each method reads (student and teacher alike)
TAPS = {"student": (), "kd": (), "fitnet": ("layer2",), "at": ("layer1", "layer2", "layer3"),
        "ft": ("layer3",), "rkd": ("pool",), "nst": ("layer1", "layer2", "layer3"), "pkt": ("pool",)}
#: every distillation method built on `Distill` (others join through `register_kind`)
KINDS = tuple(TAPS)
#: the input size the published weights were tuned on (RepDistiller's CIFAR-100)
WEIGHT_TUNED_INPUT = (32, 32)
#: how a term's value scales with the positions n = H x W of the maps it compares: AT
#: averages squared differences of unit-norm attention maps over positions (~ 1 / n),
#: RepDistiller's FT their absolute differences (~ 1 / sqrt n); the other terms compare
#: logits, pooled features or per-position raw features, whose means do not depend on n
POSITION_EXPONENT = {"at": 1.0, "ft": 0.5}


def register_kind(kind: str, taps: tuple[str, ...], weight: float) -> None:
    """Make `kind` a `Distill` method defined in another module (crd.py, dkd.py): its
    tapped modules and published weight; the engine then treats it as a KD method (its
    teacher run is recorded, checked and rebuilt like the others')."""
    global KINDS
    TAPS[kind] = tuple(taps)
    PUBLISHED_WEIGHT[kind] = float(weight)
    if kind not in KINDS:
        KINDS = KINDS + (kind,)


def torchdistill_kd(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, alpha: float,
                    temperature: float) -> torch.Tensor:
    """torchdistill's KDLoss, ``alpha * CE + (1 - alpha) * T^2 KL`` (alpha on the hard
    loss): equal to our ``(1 - a) CE + a KD`` with ``a = 1 - alpha``."""
    return alpha * losses.cross_entropy(student, y) + (1 - alpha) * losses.kd_kl(student, teacher, temperature)


def conv_reg(s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> nn.Sequential:
    """FitNets' regressor as RepDistiller's ``ConvReg`` (HobbitLong/RepDistiller@b84f547
    models/util.py; mdistiller's distillers/_common.py is the same): conv + BN + ReLU, the
    conv with a bias and chosen by the spatial sizes: 1x1 for equal sizes, 3x3 stride 2
    when the student's map is twice the teacher's, 4x4 stride-2 transposed conv when half.
    (RepDistiller's other case, a (1 + Hs - Ht)-wide kernel, depends on the absolute input
    size, which a Learner does not know when it is built: refused.)"""
    (cs, hs, ws), (ct, ht, wt) = s_shape[-3:], t_shape[-3:]
    if (hs, ws) == (ht, wt):
        conv = nn.Conv2d(cs, ct, kernel_size=1)
    elif (hs, ws) == (2 * ht, 2 * wt):
        conv = nn.Conv2d(cs, ct, kernel_size=3, stride=2, padding=1)
    elif (2 * hs, 2 * ws) == (ht, wt):
        conv = nn.ConvTranspose2d(cs, ct, kernel_size=4, stride=2, padding=1)
    else:
        raise ConfigError(f"fitnet: no regressor from the student's {hs}x{ws} hint map to the teacher's {ht}x{wt} "
                          f"(equal sizes or a factor of 2 only); pick a teacher with the student's stage strides")
    return nn.Sequential(conv, nn.BatchNorm2d(ct), nn.ReLU())


def _conv_act(cin: int, cout: int, bn: bool, transposed: bool = False) -> list[nn.Module]:
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(cin, cout, 3, 1, 1)
    return [conv, *([nn.BatchNorm2d(cout)] if bn else []), nn.LeakyReLU(0.1)]


def paraphraser(c_t: int, k: float = 0.5) -> tuple[nn.Sequential, nn.Sequential]:
    """FT's paraphraser (encoder, decoder) as RepDistiller's ``Paraphraser`` (models/util.py,
    rate k = 0.5, ``use_bn=False``): three 3x3 convs with bias + LeakyReLU(0.1) down to
    int(k c_t) channels, and three 3x3 transposed convs + LeakyReLU(0.1) back."""
    m = int(c_t * k)
    enc = nn.Sequential(*_conv_act(c_t, c_t, False), *_conv_act(c_t, m, False), *_conv_act(m, m, False))
    dec = nn.Sequential(*_conv_act(m, m, False, True), *_conv_act(m, c_t, False, True),
                        *_conv_act(c_t, c_t, False, True))
    return enc, dec


def translator(c_s: int, c_t: int, k: float = 0.5) -> nn.Sequential:
    """FT's translator as RepDistiller's ``Translator`` (models/util.py, ``use_bn=True``):
    three 3x3 convs with bias + BN + LeakyReLU(0.1), to int(k c_t) channels."""
    m = int(c_t * k)
    return nn.Sequential(*_conv_act(c_s, c_s, True), *_conv_act(c_s, m, True), *_conv_act(m, m, True))


@torch.no_grad()
def _shapes(net: nn.Module, names: tuple[str, ...], in_channels: int) -> dict[str, tuple[int, ...]]:
    """(C, H, W) of each tapped output, from one probe forward (eval mode, 32x32: cooplib's
    networks have the same strides at every input size, so the size ratios hold)."""
    was = net.training
    net.eval()
    with Taps(net, names) as taps:
        net(torch.zeros(2, in_channels, 32, 32))
        shapes = {n: tuple(taps[n].shape[1:]) for n in names}
    net.train(was)
    return shapes


def ft_warmup_epochs(warmup_epochs: int | None, epochs: int) -> int:
    """FT's paraphraser epochs in a run of `epochs`: the given count, or (None) RepDistiller's
    share of its budget, 30 of 30 + 240 epochs, rounded, at least 1 and below `epochs`."""
    if warmup_epochs is None:
        return min(epochs - 1, max(1, round(epochs * FT_INIT_EPOCHS / (FT_INIT_EPOCHS + FT_MAIN_EPOCHS))))
    if warmup_epochs >= epochs:
        raise ConfigError(f"ft option warmup_epochs={warmup_epochs} leaves no epoch of the {epochs}-epoch run for the "
                          f"student: use fewer (None: {FT_INIT_EPOCHS}/{FT_INIT_EPOCHS + FT_MAIN_EPOCHS} of the run)")
    return warmup_epochs


class Distill(Learner):
    """Student network + frozen teacher + the method's adapters; head ``net`` (the student)."""

    def __init__(self, kind: str, student: nn.Module, teacher: nn.Module | None = None, *,
                 in_channels: int = 3, convention: str = "repdistiller", weight: float | None = None,
                 alpha: float = 0.5, label_smoothing: float | None = None, temperature: float = 4.0,
                 warmup_epochs: int | None = None, ft_convention: str = "repdistiller",
                 teacher_top1: float | None = None) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"unknown distillation kind {kind!r}; known: {', '.join(KINDS)}")
        check_options(kind, convention=convention, weight=weight, alpha=alpha, label_smoothing=label_smoothing,
                      temperature=temperature, warmup_epochs=warmup_epochs, ft_convention=ft_convention)
        if (teacher is None) != (kind == "student"):
            raise ConfigError(f"method {kind!r} " + ("needs teacher=<run dir>" if teacher is None
                                                      else "(the pure student) takes no teacher"))
        self.method = kind
        self.kind = kind
        self.net = student
        self.convention = convention
        self.ft_convention = ft_convention
        self.weight = float(published_weight(kind, ft_convention) if weight is None else weight)
        self.alpha = float(alpha)
        self.label_smoothing = float((0.1 if convention == "seed" else 0.0) if label_smoothing is None else label_smoothing)
        self.temperature = float(temperature)
        self.warmup_epochs = warmup_epochs
        self.teacher_top1 = teacher_top1
        self.taps = TAPS[kind]
        self._student_taps = Taps(self.net, self.taps)
        self.adapters = nn.ModuleDict()
        if teacher is not None:
            for p in teacher.parameters():
                p.requires_grad_(False)
            self.teacher = teacher.eval()
            self._teacher_taps = Taps(self.teacher, self.taps)
            self._build_adapters(in_channels)
        self._teacher_out: dict[str, torch.Tensor] = {}

    def _build_adapters(self, in_channels: int) -> None:
        if self.kind not in ("fitnet", "ft"):
            return
        ss = _shapes(self.net, self.taps, in_channels)
        st = _shapes(self.teacher, self.taps, in_channels)
        (name,) = self.taps
        if self.kind == "fitnet":
            self.adapters["regressor"] = conv_reg(ss[name], st[name])
        else:
            self.adapters["paraphraser"], self.adapters["decoder"] = paraphraser(st[name][0])
            self.adapters["translator"] = translator(ss[name][0], st[name][0])

    def train(self, mode: bool = True) -> "Distill":
        """The teacher stays in eval mode (its BatchNorm statistics are frozen)."""
        super().train(mode)
        if getattr(self, "teacher", None) is not None:
            self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        if self.training and getattr(self, "teacher", None) is not None:
            with torch.no_grad():
                t_logits = self.teacher(x)
            self._teacher_out = {"logits": t_logits.detach(),
                                 **{n: f.detach() for n, f in self._teacher_taps.features().items()}}
        return {"net": logits}

    def distill_term(self, logits: torch.Tensor, y: torch.Tensor, state: TrainState) -> dict[str, torch.Tensor]:
        """The method's unweighted term(s) from the student's taps and the stored teacher outputs."""
        t, s = self._teacher_out, self._student_taps.features()
        if self.kind == "kd":
            return {"kd": losses.kd_kl(logits, t["logits"], self.temperature)}
        if self.kind == "fitnet":
            return {"fitnet": losses.hint_mse(self.adapters["regressor"](s["layer2"]), t["layer2"])}
        if self.kind in ("at", "nst"):
            fn = losses.attention_transfer if self.kind == "at" else losses.nst
            return {self.kind: sum(fn(s[n], t[n]) for n in self.taps)}
        if self.kind == "rkd":
            return {"rkd": losses.rkd(s["pool"], t["pool"])}
        if self.kind == "pkt":
            return {"pkt": losses.pkt(s["pool"], t["pool"])}
        # ft: the paraphraser's pre-training, then its (frozen) factor is the target
        warm = state.epoch < ft_warmup_epochs(self.warmup_epochs, state.epochs)
        para = self.adapters["paraphraser"]
        para.train(warm and self.training)
        if warm:  # RepDistiller helper/pretrain.py: MSE of the reconstructed teacher map
            return {"ft_reconstruction": losses.hint_mse(self.adapters["decoder"](para(t["layer3"])), t["layer3"])}
        with torch.no_grad():
            factor_t = para(t["layer3"])
        return {"ft": losses.factor_transfer(self.adapters["translator"](s["layer3"]), factor_t, self.ft_convention)}

    def loss(self, heads, y, state: TrainState):
        logits = heads["net"]
        ce = losses.cross_entropy(logits, y, self.label_smoothing)
        if self.kind == "student":
            return ce, {"ce/net": ce}
        terms = self.distill_term(logits, y, state)
        if "ft_reconstruction" in terms:  # FT pre-training: the paraphraser alone, the student frozen
            total = terms["ft_reconstruction"]
        elif self.convention == "seed":
            total = (1 - self.alpha) * ce + self.alpha * sum(self._weight(k) * v for k, v in terms.items())
        else:
            gamma = 0.1 if self.kind == "kd" else 1.0
            total = gamma * ce + sum(self._weight(k) * v for k, v in terms.items())
        parts = {"ce/net": ce, **{f"{k}/net": v for k, v in terms.items()}}
        if self.teacher_top1 is not None:  # a constant record, not part of the total
            parts["test_top1/teacher"] = torch.tensor(float(self.teacher_top1), device=logits.device)
        self._teacher_out = {}
        return total, parts

    def _weight(self, term: str) -> float:
        """KD under the seed convention is weighted by alpha alone (D = T^2 KL)."""
        if self.kind == "kd" and self.convention == "seed":
            return 1.0
        return self.weight

    def deployable(self) -> nn.Module:
        return self.net

    @property
    def primary_head(self) -> str:
        return "net"


def weight_strength(kind: str, image_size: tuple[int, int]) -> float:
    """How many times stronger `kind`'s published weight acts on `image_size` inputs than on
    the 32x32 inputs it was tuned on, for maps alike but for resolution (every tapped map
    scales with the input): (1024 / (H W)) ** `POSITION_EXPONENT` (1: no dependence).
    E.g. AT on 8x8 digits: 16. torchdistill's FT normalises the whole factor (~ 1 / sqrt
    of its entries, the channels fixed), so both FT conventions scale alike."""
    h, w = (int(v) for v in image_size)
    ref = WEIGHT_TUNED_INPUT[0] * WEIGHT_TUNED_INPUT[1]
    return (ref / (h * w)) ** POSITION_EXPONENT.get(kind, 0.0)


def effective_strength(kind: str, image_size: tuple[int, int], weight: float | None = None,
                       ft_convention: str = "repdistiller") -> float:
    """How strongly `kind`'s term acts on `image_size` inputs at `weight` (None or NaN: the
    published one), relative to the published weight on 32x32 inputs (1: as tuned)."""
    published = published_weight(kind, ft_convention)
    scale = 1.0 if weight is None or weight != weight else float(weight) / published
    return weight_strength(kind, image_size) * scale


def published_weight(kind: str, ft_convention: str = "repdistiller") -> float:
    """The weight of `kind`'s term in its reference (FT's depends on whose FT)."""
    if kind == "ft" and ft_convention == "torchdistill":
        return FT_TORCHDISTILL_WEIGHT
    return PUBLISHED_WEIGHT.get(kind, 0.0)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_options(kind: str, **options: Any) -> None:
    """Each option of a distillation method in its range, else one `ConfigError` naming
    the option, its allowed range and the value given (before anything is built)."""
    rules = {
        "teacher": (lambda v: v is None or (isinstance(v, (str, os.PathLike)) and str(v) != ""),
                    "the path of a complete run directory (a string)"),
        "convention": (lambda v: v in CONVENTIONS, f"one of {', '.join(CONVENTIONS)}"),
        "weight": (lambda v: v is None or (_number(v) and v >= 0),
                   f"a number >= 0 (None: the published {PUBLISHED_WEIGHT.get(kind, 0.0):g})"),
        "alpha": (lambda v: _number(v) and 0 <= v <= 1,
                  "a number in [0, 1] (the distillation share; 1 - alpha weights the cross-entropy)"),
        "label_smoothing": (lambda v: v is None or (_number(v) and 0 <= v < 1), "a number in [0, 1) or None"),
        "temperature": (lambda v: _number(v) and v > 0, "a number > 0"),
        "warmup_epochs": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0),
                          "an integer >= 0 or None"),
        "ft_convention": (lambda v: v in losses.FT_CONVENTIONS, f"one of {', '.join(losses.FT_CONVENTIONS)}"),
    }
    for name, value in options.items():
        if name not in rules:  # a kind's own option, checked by its registry declaration
            continue
        ok, allowed = rules[name]
        if not ok(value):
            raise ConfigError(f"{kind} option {name} must be {allowed}, got {value!r} ({type(value).__name__})")


def teacher_mismatch(ident: dict, num_classes: int, in_channels: int, dataset: str | None = None) -> str | None:
    """Why a teacher (its `experiment.run_identity`) does not fit a student's data, or None."""
    wrong = [what for what, ok in (("dataset", dataset is None or ident.get("dataset") in (None, dataset)),
                                   ("classes", ident.get("num_classes") in (None, num_classes)),
                                   ("input channels", ident.get("in_channels") in (None, in_channels))) if not ok]
    if not wrong:
        return None
    theirs = f"{ident.get('dataset')!r}, {ident.get('num_classes')} classes, {ident.get('in_channels')} channels"
    ours = f"{dataset!r}, " if dataset is not None else ""
    return (f"teacher {ident['run']} does not fit the student's data ({' and '.join(wrong)} differ): the teacher was "
            f"trained on {theirs}; the student trains on {ours}{num_classes} classes, {in_channels} channels. "
            f"Use a teacher trained on the student's dataset")


#: (run reference, the student's classes, its input channels) -> (the teacher run's deployed
#: network, its last-epoch test top-1): how a ``teacher=<run dir>`` becomes a network. The
#: engine plugs it in (`cooplib.engine.experiment.load_teacher`): methods never read runs.
TeacherLoader = Callable[[str, int, int], "tuple[nn.Module, float]"]
_LOADER: list[TeacherLoader] = []


def use_teacher_loader(load: TeacherLoader) -> None:
    """Set how a teacher run reference is loaded (the engine calls this on import)."""
    _LOADER[:] = [load]


def load_teacher(run_dir: str | Path, num_classes: int, in_channels: int) -> tuple[nn.Module, float]:
    """The teacher of ``teacher=run_dir``: its deployed network and test top-1, through the
    loader the engine set (`use_teacher_loader`)."""
    if not _LOADER:
        raise ConfigError(f"teacher={str(run_dir)!r} is a run reference and no teacher loader is set: "
                          f"import cooplib.engine.experiment (it loads teacher runs), or build through it")
    return _LOADER[0](str(run_dir), num_classes, in_channels)


#: the teacher identity `recorded_teacher` stands in for the teacher run (None: load the run)
_RECORDED: ContextVar[dict | None] = ContextVar("cooplib_recorded_teacher", default=None)


@contextmanager
def recorded_teacher(identity: dict) -> Iterator[None]:
    """Within: the factories build the teacher as an untrained network of the shape
    `identity` (a student run's ``provenance.teacher``) records, without reading the
    teacher run; for loading a student whose weights (teacher's included) are its record."""
    token = _RECORDED.set(identity)
    try:
        yield
    finally:
        _RECORDED.reset(token)


def teacher_structure(identity: dict) -> nn.Module:
    """An untrained network shaped like the deployed network of the recorded teacher."""
    method, model = identity["method"], identity["model"]
    nc, ic = identity["num_classes"], identity["in_channels"]
    if method in KINDS:  # a distilled teacher deploys its plain student network
        return models.build(model, nc, ic)
    return METHODS.build(method, model, nc, ic, **(identity.get("method_args") or {})).deployable()


def resolve_teacher(kind: str, teacher: str | None, num_classes: int, in_channels: int
                    ) -> tuple[nn.Module | None, float | None]:
    """The teacher network and its test top-1 of a factory's ``teacher=`` (None for the
    pure student): the recorded shape inside `recorded_teacher`, else the loaded run."""
    if (teacher is None) != (kind == "student"):
        raise ConfigError(f"method {kind!r} " + ("needs teacher=<run dir>" if teacher is None
                                                  else "(the pure student) takes no teacher"))
    if teacher is None:
        return None, None
    recorded = _RECORDED.get()
    if recorded is not None:
        return teacher_structure(recorded), recorded.get("top1")
    return load_teacher(teacher, num_classes, in_channels)


def _factory(kind: str):
    def build(model: str, num_classes: int, in_channels: int = 3, *, teacher: str | None = None,
              convention: str = "repdistiller", weight: float | None = None, alpha: float = 0.5,
              label_smoothing: float | None = None, temperature: float = 4.0,
              warmup_epochs: int | None = None) -> Distill:
        common = dict(convention=convention, weight=weight, alpha=alpha, label_smoothing=label_smoothing,
                      temperature=temperature, warmup_epochs=warmup_epochs)
        return _build(kind, model, num_classes, in_channels, teacher, **common)
    build.__name__ = f"build_{kind}"
    build.__doc__ = f"Registry factory: a `Distill` Learner of kind {kind!r} (see cooplib.methods.kd)."
    return build


def _build(kind: str, model: str, num_classes: int, in_channels: int, teacher: str | None, *, cls: type | None = None,
           extra: dict | None = None, **options) -> Distill:
    """The Learner of a factory: `Distill` of `kind`, or `cls` (a subclass that fixes its
    kind, taking the `extra` options of its own)."""
    check_options(kind, teacher=teacher, **options)
    if (teacher is None) != (kind == "student"):
        resolve_teacher(kind, teacher, num_classes, in_channels)  # its error, before anything is built
    student = models.build(model, num_classes, in_channels)  # first: its init follows the run's seed
    net, top1 = resolve_teacher(kind, teacher, num_classes, in_channels)
    if cls is None:
        return Distill(kind, student, net, in_channels=in_channels, teacher_top1=top1, **options)
    return cls(student, net, in_channels=in_channels, teacher_top1=top1, **(extra or {}), **options)


for _kind in KINDS:
    if _kind != "ft":
        METHODS.register(_kind)(_factory(_kind))


@METHODS.register("ft", choices={"ft_convention": losses.FT_CONVENTIONS})
def build_ft(model: str, num_classes: int, in_channels: int = 3, *, teacher: str | None = None,
             convention: str = "repdistiller", weight: float | None = None, alpha: float = 0.5,
             label_smoothing: float | None = None, temperature: float = 4.0, warmup_epochs: int | None = None,
             ft_convention: str = "repdistiller") -> Distill:
    """Registry factory: factor transfer; ``ft_convention`` picks whose loss and weight
    (RepDistiller's, 200, or torchdistill's, 1000; see `cooplib.losses.factor_transfer`)."""
    return _build("ft", model, num_classes, in_channels, teacher, convention=convention, weight=weight, alpha=alpha,
                  label_smoothing=label_smoothing, temperature=temperature, warmup_epochs=warmup_epochs,
                  ft_convention=ft_convention)
