"""Execute the notebooks of a profile with papermill, then build the Jupyter Book.

    python -m cooplib.book all --profile smoke          # what `make book` runs
    python -m cooplib.book run --profile paper --only baseline
    python -m cooplib.book build                        # HTML only, from book/_executed
    python -m cooplib.book reference                    # refresh the nbval reference outputs

Papermill only warns about a parameter the notebook does not declare; here it is an
error with a suggestion, checked before anything runs. Notebooks run in notebooks/
with absolute output paths, so the result does not depend on the caller's directory.
"""
from __future__ import annotations

import argparse
import os
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
BUILD = REPO_ROOT / "_build"

#: parameters every notebook declares, filled in by `execute`
INJECTED = ("profile", "out_dir")


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.yml"))


def load_profile(name: str) -> dict:
    """The profile `name` (a file in notebooks/profiles/ or a path to a YAML file)."""
    path = Path(name) if name.endswith((".yml", ".yaml")) else PROFILES / f"{name}.yml"
    if not path.exists():
        raise ConfigError(f"unknown profile {name!r}; available: {', '.join(profile_names())}{suggest(name, profile_names())}")
    prof = yaml.safe_load(path.read_text()) or {}
    if not isinstance(prof.get("notebooks"), dict) or not prof["notebooks"]:
        raise ConfigError(f"profile {path} needs a 'notebooks:' mapping of notebook name -> parameters")
    prof["name"] = path.stem
    return prof


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
        declared = notebook_parameters(nb)
        for key in params:
            if key in INJECTED:
                raise ConfigError(f"profile {profile['name']!r}, notebook {nb!r}: {key!r} is set by cooplib.book, not by profiles")
            if key not in declared:
                raise ConfigError(
                    f"profile {profile['name']!r}, notebook {nb!r}: unknown parameter {key!r}{suggest(key, declared)}; "
                    f"the notebook declares: {', '.join(declared)}"
                )
        plan[nb] = params
    return plan


def runs_dir_for(profile: dict) -> Path:
    return (REPO_ROOT / profile.get("runs_dir", f"runs/{profile['name']}")).resolve()


def execute(profile_name: str, only: list[str] | None = None, runs_dir: str | Path | None = None, progress: bool = False) -> list[Path]:
    """Run the profile's notebooks with papermill into book/_executed/; return their paths."""
    import papermill

    profile = load_profile(profile_name)
    plan = validate(profile, only)
    out_root = Path(runs_dir).resolve() if runs_dir else runs_dir_for(profile)
    EXECUTED.mkdir(parents=True, exist_ok=True)
    os.environ["COOPLIB_PROGRESS"] = "1" if progress else "0"
    outputs, timings = [], {}
    for nb, params in plan.items():
        output = EXECUTED / f"{nb}.ipynb"
        print(f"[cooplib.book] {profile['name']}: executing {nb} -> {output.relative_to(REPO_ROOT)}", flush=True)
        t0 = time.perf_counter()
        papermill.execute_notebook(
            str(NOTEBOOKS / f"{nb}.ipynb"),
            str(output),
            parameters={**params, "profile": profile["name"], "out_dir": str(out_root)},
            cwd=str(NOTEBOOKS),
            kernel_name="python3",
            progress_bar=False,
        )
        timings[nb] = time.perf_counter() - t0
        print(f"[cooplib.book] {nb} done in {timings[nb]:.1f} s", flush=True)
        outputs.append(output)
    _write_build_info(profile, out_root, timings)
    return outputs


def _write_build_info(profile: dict, runs_root: Path, timings: dict[str, float]) -> None:
    """book/_executed/build_info.md, included by the intro: which profile built the book."""
    import torch

    lines = [
        f"This build was produced by the **`{profile['name']}`** profile "
        f"(`notebooks/profiles/{profile['name']}.yml`): {profile.get('description', '').strip()}",
        "",
        f"Executed {time.strftime('%Y-%m-%d %H:%M %Z')} with torch {torch.__version__} on "
        f"{'CUDA: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}; "
        f"run directories under `{runs_root.relative_to(REPO_ROOT) if runs_root.is_relative_to(REPO_ROOT) else runs_root}`.",
        "",
        "| notebook | seconds to execute |",
        "|---|---|",
        *[f"| {nb} | {sec:.1f} |" for nb, sec in timings.items()],
        "",
    ]
    (EXECUTED / "build_info.md").write_text("\n".join(lines))


def build() -> Path:
    """`jupyter-book build` of the repository root (execution off); return index.html."""
    missing = [e["file"] for e in _toc_chapters() if not (REPO_ROOT / f"{e['file']}.ipynb").exists() and not (REPO_ROOT / f"{e['file']}.md").exists()]
    if missing or not (EXECUTED / "build_info.md").exists():
        raise ConfigError(
            f"nothing to build yet ({', '.join(missing) or 'build_info.md'} missing): "
            f"run `python -m cooplib.book run --profile smoke` first (or `make book`)"
        )
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(REPO_ROOT), "--path-output", str(REPO_ROOT)]
    subprocess.run(cmd, check=True, cwd=REPO_ROOT)
    index = BUILD / "html" / "index.html"
    print(f"[cooplib.book] open {index}")
    return index


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
    sub.add_parser("build", help="build the HTML book from book/_executed")
    p = sub.add_parser("reference", help="refresh the stored outputs of notebooks/ (nbval reference)")
    p.add_argument("--only", nargs="+")
    sub.add_parser("profiles", help="list profiles")
    args = ap.parse_args(argv)
    try:
        if args.cmd in ("run", "all"):
            t0 = time.perf_counter()
            execute(args.profile, args.only, args.runs_dir, args.progress)
            if args.cmd == "all":
                build()
            print(f"[cooplib.book] total {time.perf_counter() - t0:.1f} s")
        elif args.cmd == "build":
            build()
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
