"""The distillation zoo's sweeps: teachers, and students of every KD method paired with them.

`assign_teachers` pairs student seeds with teacher seeds; `run_zoo` trains (or reuses)
the teacher runs and the students of every method (`cooplib.methods.kd`) whose
``teacher=<run dir>`` points at them, for the kd_zoo and representations chapters.
"""
from __future__ import annotations

import pandas as pd

from ..base.errors import ConfigError
from ..methods import kd
from . import experiment, runs

ASSIGNMENTS = ("same", "matched", "all")
#: how AT's and FT's weights are set (`map_weight_options`)
MAP_WEIGHTS = ("published", "as_tuned")


def assign_teachers(student_seeds, teacher_seeds, mode: str = "same") -> list[tuple[int, int]]:
    """(student seed, teacher seed) pairs.

    - ``same``: every student seed distils from the first teacher seed (teacher quality
      held fixed: the student's seed variance is its own);
    - ``matched``: student seed s from teacher seed s (the seed experiment's design, which
      confounds teacher quality with student seed);
    - ``all``: every student seed against every teacher seed (crossed; separates the two).
    """
    students, teachers = list(student_seeds), list(teacher_seeds)
    if not teachers:
        raise ConfigError("teacher_seeds is empty: give at least one teacher seed, e.g. [0]")
    if not students:
        raise ConfigError("seeds (the student seeds) is empty: give at least one, e.g. [0, 1, 2]")
    if mode == "same":
        return [(s, teachers[0]) for s in students]
    if mode == "matched":
        missing = [s for s in students if s not in teachers]
        if missing:
            raise ConfigError(f"matched teachers need a teacher for every student seed; missing {missing}")
        return [(s, s) for s in students]
    if mode == "all":
        return [(s, t) for t in teachers for s in students]
    raise ConfigError(f"teacher assignment must be one of {ASSIGNMENTS}, got {mode!r}")


def map_weight_options(methods, image_size: tuple[int, int], rule: str = "published",
                       ft_convention: str = "repdistiller") -> dict[str, dict]:
    """{method: {"weight": w}} for the methods whose term depends on the maps' size (AT, FT).

    ``published``: none (each method's published weight, as printed; tuned on 32x32 CIFAR
    inputs). ``as_tuned``: the published weight divided by `kd.weight_strength` for
    `image_size`, so that it acts on these inputs as the published one does on 32x32 (the
    same weight on 32x32; AT's divided by 16 on 8x8 digits). A named deviation from the
    references, for inputs of another size."""
    if rule not in MAP_WEIGHTS:
        raise ConfigError(f"map_weights must be one of {MAP_WEIGHTS}, got {rule!r}")
    if rule == "published":
        return {}
    return {m: {"weight": kd.published_weight(m, ft_convention) / kd.weight_strength(m, image_size)}
            for m in methods if kd.weight_strength(m, image_size) != 1.0}


def run_zoo(base, *, teacher_model: str, student_model: str, methods, seeds, teacher_seeds, assignment: str = "same",
            options: dict | None = None, teacher_options: dict | None = None, teacher_epochs: int | None = None,
            method_options: dict | None = None, map_weights: str = "published", out_dir=None, cluster=None):
    """Train (or reuse: complete runs with the same config are not retrained) the teachers
    (``baseline`` runs of `teacher_model`, one per teacher seed) and the students of every
    method (`student_model`, seeds paired with teachers by `assign_teachers`), all from the
    RunConfig `base` (teachers with `teacher_epochs` when given). Returns (finals, teacher_finals): `runs.load_runs` frames; finals has
    ``teacher_seed`` (NaN for the pure student, which has no teacher) and ``teacher_run``.
    `cluster` is where the runs execute (`experiment.run_all`'s: a Dask Client, cluster
    object or spec; None: the running default client, else $COOPLIB_CLUSTER).
    Every notebook that needs these runs calls this with the same arguments, so each one
    runs alone and all of them share the run directories. `method_options` ({method:
    {option: value}}) adds options for one method only (e.g. CRD's number of negatives);
    `map_weights` sets AT's and FT's weights (`map_weight_options`; a weight given in
    `method_options` wins)."""
    options, teacher_options = dict(options or {}), dict(teacher_options or {})
    if map_weights != "published":
        scaled = map_weight_options(methods, experiment.load_data(base).image_size, map_weights,
                                    options.get("ft_convention", "repdistiller"))
        given = method_options or {}
        method_options = {m: {**scaled.get(m, {}), **given.get(m, {})} for m in {*scaled, *given}}
    teacher_base = base if teacher_epochs is None else base.replace(epochs=int(teacher_epochs))
    teacher_cfgs = {t: teacher_base.replace(method="baseline", model=teacher_model, seed=t, method_args=teacher_options)
                    for t in teacher_seeds}
    teacher_dirs = dict(zip(teacher_cfgs, experiment.run_all(teacher_cfgs.values(), out_dir, cluster=cluster)))
    pairs = assign_teachers(seeds, teacher_seeds, assignment)
    configs, teacher_of = [], {}
    for kind in methods:
        if kind == "student":
            student_pairs = [(s, None) for s in dict.fromkeys(s for s, _ in pairs)]
        else:
            student_pairs = pairs
        for s, t in student_pairs:
            args = {k: v for k, v in options.items() if kind != "student" or k in ("convention", "label_smoothing")}
            args.update((method_options or {}).get(kind, {}))
            if t is not None:
                args["teacher"] = str(teacher_dirs[t])
            config = base.replace(method=kind, model=student_model, seed=s, method_args=args)
            configs.append(config)
            teacher_of[config.run_name()] = t
    dirs = experiment.run_all(configs, out_dir, cluster=cluster)
    finals = runs.load_runs(dirs)
    teachers = [teacher_of[name] for name in finals["run"]]
    finals["teacher_seed"] = pd.array(teachers, dtype="Int64")
    finals["teacher_run"] = [str(teacher_dirs[t]) if t is not None else "" for t in teachers]
    return finals, runs.load_runs(list(teacher_dirs.values())).assign(teacher_seed=list(teacher_dirs))
