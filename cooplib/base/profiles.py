"""Profiles: a profile's notebooks and parameters, its run root, and the check of a notebook's parameters.

A profile is a YAML file in notebooks/profiles/ naming the notebooks to execute and the
parameters each gets (``load_profile``); its runs go to its run root, ``runs/<profile>``
of the project unless it says ``runs_dir`` (``runs_dir_for``). Every parameter is checked
against the notebook's `parameters` cell before anything runs (``validate``), and every
notebook checks its own parameters in its first cell (``check_notebook_parameters``),
wherever it runs. `cooplib.book` executes profiles; the engine and the report read a
profile's run root and description from here.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from .cluster_spec import profile_problem as _cluster_problem
from .errors import ConfigError, suggest

#: the project: notebooks/, notebooks/profiles/ and the run roots `runs/<profile>` live under it
REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO_ROOT / "notebooks"
PROFILES = NOTEBOOKS / "profiles"

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
            why = _cluster_problem(params[key]) if key == CLUSTER and params[key] is not None else None
            if why:
                raise ConfigError(f"profile {profile['name']!r}, notebook {nb!r}: {why}")
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
