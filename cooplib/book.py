"""Execute the notebooks of a profile with papermill, then build the Jupyter Book.

    python -m cooplib.book all --profile smoke          # what `make book` runs
    python -m cooplib.book run --profile paper --only baseline
    python -m cooplib.book build                        # HTML only, from book/_executed
    python -m cooplib.book build --profile fashion      # the published book, no training
    python -m cooplib.book reference                    # refresh the nbval reference outputs

Papermill only warns about a parameter the notebook does not declare; here it is an
error with a suggestion, checked before anything runs. Notebooks find their runs in
their profile's run root (`runs/<profile>` of the project), whoever runs them.

A profile with `publish: true` keeps what its book needs in book/published/<profile>/:
the executed notebooks, build_info.md and the records of every run (config, metrics,
final summary; no weights), so `build --profile <it>` rebuilds the HTML without training.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .errors import ConfigError, suggest

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO_ROOT / "notebooks"
PROFILES = NOTEBOOKS / "profiles"
EXECUTED = REPO_ROOT / "book" / "_executed"
PUBLISHED = REPO_ROOT / "book" / "published"
STATIC = REPO_ROOT / "book" / "_assets"
BUILD = REPO_ROOT / "_build"
#: the small files of a run directory that a published book keeps (never weights)
RECORD_FILES = ("config.json", "metrics.jsonl", "final.json")

#: parameters every notebook declares, filled in by `execute`
INJECTED = ("profile", "out_dir")
#: the parameter every notebook declares for where its runs execute (a profile's top-level
#: `cluster:` fills it, see `validate`); it does not change what the runs compute
CLUSTER = "cluster"


class _ProfileLoader(yaml.SafeLoader):
    """YAML as people write it: `5e-4` is a number (YAML 1.1 wants `5.0e-4`, else text)."""


_ProfileLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.yml"))


def load_profile(name: str) -> dict:
    """The profile `name` (a file in notebooks/profiles/ or a path to a YAML file)."""
    path = Path(name) if name.endswith((".yml", ".yaml")) else PROFILES / f"{name}.yml"
    if not path.exists():
        raise ConfigError(f"unknown profile {name!r}; available: {', '.join(profile_names())}{suggest(name, profile_names())}")
    try:
        prof = yaml.load(path.read_text(), Loader=_ProfileLoader)
    except yaml.YAMLError as exc:  # one line naming the place, not a parser traceback
        raise ConfigError(f"profile {path}: YAML syntax error{_yaml_where(exc)}") from None
    _check_profile(path, {} if prof is None else prof)
    prof = dict(prof)
    prof["name"] = path.stem
    return prof


#: top-level profile keys with a fixed type: (accepted types, what to write)
_PROFILE_KEYS = {
    "runs_dir": (str, "a path (a string) like runs/{name}"),
    "description": (str, "text"),
    "evidence": (bool, "true or false"),
    "publish": (bool, "true or false"),
}


def _check_profile(path: Path, prof) -> None:
    """The shape `load_profile` promises: a mapping whose `notebooks:` maps notebook names
    to a parameter mapping (or nothing); each error is one line saying what to write."""
    if not isinstance(prof, dict):
        raise ConfigError(f"profile {path} must be a mapping with a 'notebooks:' mapping of notebook name -> "
                          f"parameters (e.g. notebooks: {{baseline: {{epochs: 3}}}}), got a {_yaml_kind(prof)}")
    notebooks = prof.get("notebooks")
    if not isinstance(notebooks, dict) or not notebooks:
        raise ConfigError(f"profile {path} needs a 'notebooks:' mapping of notebook name -> parameters "
                          f"(e.g. notebooks: {{baseline: {{epochs: 3}}}}), got {notebooks!r}")
    for nb, params in notebooks.items():
        if params is not None and not isinstance(params, dict):
            hint = ""
            if isinstance(params, str) and "=" in params:
                key, _, value = params.partition("=")
                hint = f" (write {nb}: {{{key.strip()}: {value.strip()}}})"
            raise ConfigError(f"profile {path}: notebooks: {nb} must be a mapping of parameter: value (e.g. {nb}: "
                              f"{{epochs: 3}}) or empty, got {params!r}{hint}")
    for key, (kind, what) in _PROFILE_KEYS.items():
        if key in prof and not isinstance(prof[key], kind):
            raise ConfigError(f"profile {path}: {key} must be {what.format(name=path.stem)}, got {prof[key]!r}")
    if prof.get(CLUSTER) is not None:
        why = _cluster_problem(prof[CLUSTER])
        if why:
            raise ConfigError(f"profile {path}: {why}")


def _cluster_problem(spec) -> str | None:
    """Why a profile's cluster entry is no cluster spec (`cooplib.cluster`), or None. A
    profile is text: a string ('local:4', 'tcp://host:8786', ...) or a jobqueue mapping."""
    from .cluster import check_spec

    if not isinstance(spec, (str, dict)):
        return (f"cluster must be a string like 'local:4' or 'tcp://host:8786', or a mapping like "
                f"{{slurm: {{cores: 8, jobs: 4}}}}, got {spec!r}")
    try:
        check_spec(spec)
    except ConfigError as exc:
        return str(exc)
    return None


def _yaml_kind(value) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), type(value).__name__)


def _yaml_where(exc: yaml.YAMLError) -> str:
    """' at line L, column C: <what the parser found>' (1-based, as editors count)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    context = getattr(exc, "context", None)
    return f"{where}: {problem}" + (f" ({' '.join(str(context).split())})" if context else "")


def notebook_parameters(notebook: str) -> dict[str, str]:
    """Name -> default source of every assignment in the notebook's `parameters` cell.

    Parsed with `ast` (papermill's own line parser silently skips some lines).
    """
    import ast

    import nbformat

    path = NOTEBOOKS / f"{notebook}.ipynb"
    if not path.exists():
        names = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
        raise ConfigError(f"no notebook {notebook!r} in {NOTEBOOKS}; available: {', '.join(names)}{suggest(notebook, names)}")
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ConfigError(f"{path} needs exactly one code cell tagged 'parameters', found {len(cells)}")
    params = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    params[t.id] = ast.unparse(node.value) if node.value is not None else ""
    return params


def validate(profile: dict, only: list[str] | None = None) -> dict[str, dict]:
    """Check every parameter of the profile against its notebook; return what to run."""
    selected = only or list(profile["notebooks"])
    missing = [n for n in selected if n not in profile["notebooks"]]
    if missing:
        raise ConfigError(f"profile {profile['name']!r} has no notebook {missing[0]!r}; it has {', '.join(profile['notebooks'])}{suggest(missing[0], profile['notebooks'])}")
    plan = {}
    for nb in selected:
        params = dict(profile["notebooks"][nb] or {})
        if profile.get(CLUSTER) is not None:  # the profile's cluster, unless this notebook names its own
            params.setdefault(CLUSTER, profile[CLUSTER])
        declared = notebook_parameters(nb)
        for key in params:
            if key in INJECTED:
                raise ConfigError(f"profile {profile['name']!r}, notebook {nb!r}: {key!r} is set by cooplib.book, not by profiles")
            if key not in declared:
                raise ConfigError(
                    f"profile {profile['name']!r}, notebook {nb!r}: unknown parameter {key!r}{suggest(key, declared)}; "
                    f"the notebook declares: {', '.join(declared)}"
                )
            if key == CLUSTER and params[key] is not None and _cluster_problem(params[key]):
                raise ConfigError(f"profile {profile['name']!r}, notebook {nb!r}: {_cluster_problem(params[key])}")
            problem = type_mismatch(params[key], declared[key])
            if problem:
                raise ConfigError(f"profile {profile['name']!r}, notebook {nb!r}: {key} {problem}")
        plan[nb] = params
    return plan


def type_mismatch(value, default_source: str) -> str | None:
    """Why `value` cannot stand for a parameter whose default is `default_source`, or None.

    The default's literal type is the parameter's type (an int may stand for a float;
    None, or a default that is not a literal, accepts anything)."""
    import ast

    try:
        default = ast.literal_eval(default_source)
    except (ValueError, SyntaxError):
        return None
    if default is None or value is None:
        return None
    checks = [
        (bool, lambda v: isinstance(v, bool), "true or false"),
        (int, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
        (float, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
        (str, lambda v: isinstance(v, str), "a string"),
        ((list, tuple), lambda v: isinstance(v, (list, tuple)), "a list"),
        (dict, lambda v: isinstance(v, dict), "a mapping"),
    ]
    for kind, ok, what in checks:
        if isinstance(default, kind):
            return None if ok(value) else f"must be {what} like {default_source}, got {value!r}"
    return None


#: names IPython puts in a kernel's namespace (never parameters)
_KERNEL_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})


def check_notebook_parameters(notebook: str, namespace: dict) -> None:
    """The guard cell of every notebook: the strict check of `validate`, wherever the
    notebook runs (papermill directly, JupyterLab, nbval), not only under cooplib.book.

    Papermill injects `-p NAME VALUE` as a cell starting `# Parameters`; a name there
    that the notebook does not declare, or a value of the wrong type, is an error with
    a suggestion (papermill itself only warns and runs with the default)."""
    import ast

    declared = notebook_parameters(notebook)
    injected = []
    for source in namespace.get("In", []):
        if source.lstrip().startswith("# Parameters"):
            injected += [t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
                         for t in node.targets if isinstance(t, ast.Name)]
    for name in injected:
        if name not in declared:
            raise ConfigError(f"notebook {notebook!r}: unknown parameter {name!r}{suggest(name, declared)}; "
                              f"it declares: {', '.join(declared)}")
    for name, default in declared.items():
        problem = type_mismatch(namespace.get(name), default) if name in namespace else None
        if problem:
            raise ConfigError(f"notebook {notebook!r}: parameter {name} {problem}")
    LAST_CHECK.clear()
    LAST_CHECK.update(notebook=notebook, profile=namespace.get("profile"),
                      hand_set=hand_set(notebook, namespace, declared))


#: what the last `check_notebook_parameters` found: the notebook, its profile, and the
#: parameters whose values are not the profile's (set by hand, e.g. `papermill -p`)
LAST_CHECK: dict = {}


def hand_set(notebook: str, namespace: dict, declared: dict[str, str] | None = None) -> dict:
    """{name: value} of the notebook's parameters that differ from its profile's entry
    (or, where the profile does not set one, from the notebook's default)."""
    import ast

    declared = declared if declared is not None else notebook_parameters(notebook)
    try:
        entry = dict(load_profile(str(namespace.get("profile"))).get("notebooks", {}).get(notebook) or {})
    except ConfigError:
        entry = {}
    out = {}
    for name, source in declared.items():
        if name in INJECTED or name == CLUSTER or name not in namespace:  # where runs execute is not what they compute
            continue
        try:
            expected = entry[name] if name in entry else ast.literal_eval(source)
        except (ValueError, SyntaxError):
            continue
        value = namespace[name]
        if isinstance(expected, tuple) or isinstance(value, tuple):
            expected, value = list(expected) if isinstance(expected, tuple) else expected, list(value) if isinstance(value, tuple) else value
        if value != expected:
            out[name] = value
    return out


def runs_dir_for(profile: dict) -> Path:
    return (REPO_ROOT / profile.get("runs_dir", f"runs/{profile['name']}")).resolve()


def execute(profile_name: str, only: list[str] | None = None, runs_dir: str | Path | None = None,
            progress: bool = False, jobs: int = 1) -> dict[str, str]:
    """Run the profile's notebooks with papermill into book/_executed/.

    Every notebook runs even when another fails; `jobs` > 1 runs that many notebooks at
    once (each in its own kernel; the notebooks are independent). Executed notebooks of
    another profile are removed first, so the book never mixes profiles. A profile's
    `cluster:` entry (see `cooplib.cluster`) is where the notebooks' sweeps run: `validate`
    passes it as their `cluster` parameter (a notebook's own `cluster:` wins). Returns
    the failures, {notebook: "In [n]: Error: message"} (empty when all succeeded).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    profile = load_profile(profile_name)
    plan = validate(profile, only)
    out_root = Path(runs_dir).resolve() if runs_dir else runs_dir_for(profile)
    EXECUTED.mkdir(parents=True, exist_ok=True)
    _remove_other_profiles(profile["name"])
    os.environ["COOPLIB_PROGRESS"] = "1" if progress else "0"
    os.environ["COOPLIB_STATIC"] = "1"  # explorers draw their static view (see cooplib.explore)
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        # each kernel gets its share of the cores: oversubscribed OpenMP threads spin and
        # made two concurrent notebooks on 2 cores 25x slower than one after another
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    # the notebooks find the profile's run root themselves; only another one is injected
    where = {"out_dir": str(out_root)} if runs_dir else {}
    params = {nb: {**p, "profile": profile["name"], **where} for nb, p in plan.items()}
    args = [(profile["name"], nb, params[nb], EXECUTED / f"{nb}.ipynb") for nb in plan]
    if jobs > 1:  # processes, not threads: papermill changes the process-wide working folder
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_execute_one, *zip(*args)))
    else:
        results = [_execute_one(*a) for a in args]
    _write_build_info(profile, out_root, {nb: seconds for nb, _, seconds in results})
    failures = {nb: why for nb, why, _ in results if why}
    if profile.get("publish") and not failures and not only and not runs_dir:
        publish(profile["name"], out_root)
    return failures


def _execute_one(profile: str, nb: str, parameters: dict, output: Path) -> tuple[str, str | None, float]:
    """Execute one notebook into `output`; return (name, why it failed or None, seconds)."""
    import papermill

    print(f"[cooplib.book] {profile}: executing {nb} -> {_shown(output)}", flush=True)
    t0 = time.perf_counter()
    why = None
    try:
        papermill.execute_notebook(str(NOTEBOOKS / f"{nb}.ipynb"), str(output), parameters=parameters,
                                   cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False)
    except papermill.PapermillExecutionError as exc:
        last = (exc.evalue or "").strip().splitlines()[-1:] or [""]
        why = f"In [{exc.exec_count}]: {exc.ename}: {last[0]}"
    except Exception as exc:  # the kernel died, a file could not be written, ...
        why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    if output.exists():
        collapse_code(output)
    seconds = time.perf_counter() - t0
    print(f"[cooplib.book] {nb} {'FAILED' if why else 'done'} in {seconds:.1f} s", flush=True)
    return nb, why, seconds


def collapse_code(path: Path) -> None:
    """Tag every code cell `hide-input`: the HTML page reads as a report and a reader
    can still expand the code (cells already tagged remove-*/hide-* keep their tags)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if cell.cell_type == "code" and not any(t.startswith(("remove-", "hide-")) for t in tags):
            tags.append("hide-input")
    nbformat.write(nb, path)


def publish(profile: str, runs_root: Path) -> Path:
    """Keep the executed book of `profile` in book/published/<profile>/ (see module doc)."""
    import shutil

    target = PUBLISHED / profile
    if target.exists():
        shutil.rmtree(target)
    (target / "records").mkdir(parents=True)
    for path in [*EXECUTED.glob("*.ipynb"), EXECUTED / "build_info.md"]:
        _copy_relative(path, target / path.name)
    for run in sorted(p for p in runs_root.iterdir() if (p / "config.json").exists()):
        (target / "records" / run.name).mkdir()
        for name in RECORD_FILES:
            if (run / name).exists():
                _copy_relative(run / name, target / "records" / run.name / name)
    print(f"[cooplib.book] {profile}: executed notebooks and run records kept in {_shown(target)}", flush=True)
    return target


def _copy_relative(source: Path, target: Path) -> None:
    """Copy a text file with this checkout's absolute path made relative (papermill's
    input/output paths, a teacher's or parent's run directory): nothing published names
    the build machine's folders."""
    text = source.read_text()
    for root in {str(REPO_ROOT), str(REPO_ROOT.resolve())}:
        text = text.replace(root + "/", "")
    target.write_text(text)


def _restore_published(profile: str) -> None:
    """Put the published executed notebooks of `profile` where the build reads them."""
    import shutil

    source = PUBLISHED / profile
    if not (source / "build_info.md").exists():
        raise ConfigError(f"profile {profile!r} has no published book in {_shown(source)}: "
                          f"run `python -m cooplib.book all --profile {profile}` (it trains)")
    if EXECUTED.exists():
        shutil.rmtree(EXECUTED)
    EXECUTED.mkdir(parents=True)
    for path in [*source.glob("*.ipynb"), source / "build_info.md"]:
        shutil.copy2(path, EXECUTED / path.name)


def _executed_profile() -> str | None:
    import nbformat

    for path in EXECUTED.glob("*.ipynb"):
        return nbformat.read(path, as_version=4).metadata.get("papermill", {}).get("parameters", {}).get("profile")
    return None


def offline_assets(root: Path = REPO_ROOT) -> Path:
    """MathJax from the `jupyter-server-mathjax` package into book/_assets/mathjax, so the
    book renders its formulas with no network (the default loads them from a CDN)."""
    import shutil

    import jupyter_server_mathjax

    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    target = root / "book" / "_assets" / "mathjax"
    if not (target / "MathJax.js").exists():
        shutil.copytree(source, target, dirs_exist_ok=True)
    return target


def jupyter_book(root: Path = REPO_ROOT) -> Path:
    """`jupyter-book build` of a book tree (execution off, MathJax local); its index.html."""
    offline_assets(root)
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(root), "--path-output", str(root)]
    subprocess.run(cmd, check=True, cwd=root)
    return root / "_build" / "html" / "index.html"


def _shown(path: Path) -> Path:
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def _remove_other_profiles(profile: str) -> None:
    """Delete executed notebooks that another profile produced (a mixed book would mislead)."""
    import nbformat

    for path in EXECUTED.glob("*.ipynb"):
        params = nbformat.read(path, as_version=4).metadata.get("papermill", {}).get("parameters", {})
        if params.get("profile") != profile:
            path.unlink()


def summary(profile: str, failures: dict[str, str], total: int) -> str:
    """The one-screen end of a batch: which notebooks failed, where, and why."""
    if not failures:
        return f"[cooplib.book] {profile}: all {total} notebook(s) executed"
    lines = [f"[cooplib.book] {profile}: {total - len(failures)} of {total} notebook(s) executed, {len(failures)} FAILED:"]
    lines += [f"  {nb:20s} {why}" for nb, why in failures.items()]
    lines.append(f"  (tracebacks in {_shown(EXECUTED)}/<notebook>.ipynb; rerun one with --only NAME; "
                 f"the HTML is built once every notebook succeeds)")
    return "\n".join(lines)


def _write_build_info(profile: dict, runs_root: Path, timings: dict[str, float]) -> None:
    """book/_executed/build_info.md, included by the intro: which profile built the book."""
    import torch

    lines = [
        f"This build was produced by the **`{profile['name']}`** profile "
        f"(`notebooks/profiles/{profile['name']}.yml`): {profile.get('description', '').strip()}",
        "",
        f"Executed {time.strftime('%Y-%m-%d %H:%M %Z')} with torch {torch.__version__} on "
        f"{'CUDA: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}; "
        f"run directories under `{_shown(runs_root)}`.",
        "",
        training_cost(runs_root),
        "",
        "| notebook | seconds to execute this time (complete runs are reused, not retrained) |",
        "|---|---|",
        *[f"| {nb} | {sec:.1f} |" for nb, sec in timings.items()],
        "",
    ]
    (EXECUTED / "build_info.md").write_text("\n".join(lines))


def training_cost(runs_root: Path) -> str:
    """The training time the runs recorded (their epochs' seconds), by method: what the book cost."""
    import json

    by_method: dict[str, list[float]] = {}
    for final in sorted(Path(runs_root).glob("*/final.json")) if Path(runs_root).exists() else []:
        try:
            seconds = float(json.loads(final.read_text()).get("seconds") or 0.0)
            method = json.loads((final.parent / "config.json").read_text())["config"]["method"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        by_method.setdefault(method, []).append(seconds)
    if not by_method:
        return "No complete run records were found to sum the training time."
    total = sum(sum(v) for v in by_method.values())
    parts = ", ".join(f"{m} {sum(v) / 60:.1f} min ({len(v)} runs)" for m, v in sorted(by_method.items()))
    return (f"Training cost: {sum(len(v) for v in by_method.values())} runs recorded {total / 60:.1f} min of "
            f"training and evaluation epochs ({parts}).")


def build(profile: str | None = None) -> Path:
    """`jupyter-book build` of the repository root (execution off); return index.html.

    With `profile`, the book of that profile: its freshly executed notebooks if
    book/_executed holds them, else its published ones (book/published/<profile>/)."""
    if profile is not None and _executed_profile() != profile:
        _restore_published(profile)
    if EXECUTED.exists() and any(EXECUTED.glob("*.ipynb")):
        write_findings()
    missing = [e["file"] for e in _toc_chapters() if not (REPO_ROOT / f"{e['file']}.ipynb").exists() and not (REPO_ROOT / f"{e['file']}.md").exists()]
    if missing or not (EXECUTED / "build_info.md").exists():
        raise ConfigError(
            f"nothing to build yet ({', '.join(missing) or 'build_info.md'} missing): "
            f"run `python -m cooplib.book run --profile smoke` first (or `make book`)"
        )
    index = jupyter_book(REPO_ROOT)
    print(f"[cooplib.book] open {index}")
    return index


def write_findings() -> Path:
    """book/_executed/findings.md: every chapter's verdicts, read back from the executed notebooks."""
    from . import findings

    name = _executed_profile()
    try:
        profile = load_profile(name) if name else None
    except ConfigError:
        profile = None
    chapters = [Path(e["file"]).name for e in _toc_chapters() if e["file"].startswith("book/_executed/")]
    return findings.write(EXECUTED, chapters, profile)


def _toc_chapters() -> list[dict]:
    toc = yaml.safe_load((REPO_ROOT / "_toc.yml").read_text())
    entries = []
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        entries.extend(part.get("chapters", []))
    return entries


def reference(only: list[str] | None = None) -> None:
    """Re-execute notebooks/ in place with their defaults (= the smoke profile) for nbval."""
    import papermill

    names = only or [p.stem for p in sorted(NOTEBOOKS.glob("*.ipynb"))]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["COOPLIB_RUNS_DIR"] = tmp
        os.environ["COOPLIB_PROGRESS"] = "0"
        os.environ["COOPLIB_STATIC"] = "1"
        for nb in names:
            path = NOTEBOOKS / f"{nb}.ipynb"
            print(f"[cooplib.book] reference outputs for {path.relative_to(REPO_ROOT)}", flush=True)
            papermill.execute_notebook(str(path), str(path), cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cooplib.book", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "all"):
        p = sub.add_parser(name, help="execute a profile's notebooks" + (" and build the book" if name == "all" else ""))
        p.add_argument("--profile", default="smoke", help=f"one of {profile_names()} or a YAML path")
        p.add_argument("--only", nargs="+", help="notebook names to execute (default: all of the profile)")
        p.add_argument("--runs-dir", help="where run directories go (default: runs/<profile>)")
        p.add_argument("--progress", action="store_true", help="show training progress bars in the executed notebooks")
        p.add_argument("--jobs", type=int, default=1, help="notebooks executed at once (default 1: one after another)")
    p = sub.add_parser("build", help="build the HTML book from book/_executed (or a published profile)")
    p.add_argument("--profile", help="build this profile's book (its published notebooks if not executed here)")
    p = sub.add_parser("reference", help="refresh the stored outputs of notebooks/ (nbval reference)")
    p.add_argument("--only", nargs="+")
    sub.add_parser("profiles", help="list profiles")
    args = ap.parse_args(argv)
    try:
        if args.cmd in ("run", "all"):
            t0 = time.perf_counter()
            failures = execute(args.profile, args.only, args.runs_dir, args.progress, args.jobs)
            print(summary(args.profile, failures, len(args.only or load_profile(args.profile)["notebooks"])), flush=True)
            if failures:
                return 1
            if args.cmd == "all":
                build(args.profile)
            print(f"[cooplib.book] total {time.perf_counter() - t0:.1f} s")
        elif args.cmd == "build":
            build(args.profile)
        elif args.cmd == "reference":
            reference(args.only)
        else:
            print("\n".join(profile_names()))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
