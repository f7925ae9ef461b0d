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
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from ..base.errors import ConfigError
from ..base.profiles import NOTEBOOKS, REPO_ROOT, load_profile, profile_names, runs_dir_for, validate

EXECUTED = REPO_ROOT / "book" / "_executed"
PUBLISHED = REPO_ROOT / "book" / "published"
STATIC = REPO_ROOT / "book" / "_assets"
BUILD = REPO_ROOT / "_build"
#: the small files of a run directory that a published book keeps (never weights)
RECORD_FILES = ("config.json", "metrics.jsonl", "final.json")
#: chapters that reuse another chapter's runs (same configurations): with --jobs they start
#: only once those chapters are done, so a run is never trained by one kernel while the
#: other waits on its lock (whose message, a path and a pid, would land in the page)
REUSES_RUNS_OF = {"representations": ("kd_zoo",), "robustness": ("baseline", "one", "dml")}


def execute(profile_name: str, only: list[str] | None = None, runs_dir: str | Path | None = None,
            progress: bool = False, jobs: int = 1) -> dict[str, str]:
    """Run the profile's notebooks with papermill into book/_executed/.

    Every notebook runs even when another fails; `jobs` > 1 runs that many notebooks at
    once (each in its own kernel; the notebooks are independent). Executed notebooks of
    another profile are removed first, so the book never mixes profiles. A profile's
    `cluster:` entry (see `cooplib.engine.cluster`) is where the notebooks' sweeps run:
    `validate` passes it as their `cluster` parameter (a notebook's own `cluster:` wins). Returns
    the failures, {notebook: "In [n]: Error: message"} (empty when all succeeded).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    from ..engine.experiment import RUN_LOG

    profile = load_profile(profile_name)
    plan = validate(profile, only)
    out_root = Path(runs_dir).resolve() if runs_dir else runs_dir_for(profile)
    EXECUTED.mkdir(parents=True, exist_ok=True)
    _remove_other_profiles(profile["name"])
    os.environ["COOPLIB_PROGRESS"] = "1" if progress else "0"
    os.environ["COOPLIB_STATIC"] = "1"  # explorers draw their static view (see cooplib.report.explore)
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        # each kernel gets its share of the cores: oversubscribed OpenMP threads spin and
        # made two concurrent notebooks on 2 cores 25x slower than one after another
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    # the notebooks find the profile's run root themselves; only another one is injected
    where = {"out_dir": str(out_root)} if runs_dir else {}
    params = {nb: {**p, "profile": profile["name"], **where} for nb, p in plan.items()}
    args = [(profile["name"], nb, params[nb], EXECUTED / f"{nb}.ipynb") for nb in plan]
    bar = tqdm(total=len(args), desc=f"{profile['name']} notebooks", unit="nb", disable=None)  # None: off unless a terminal
    fd, name = tempfile.mkstemp(prefix="cooplib-runs-", suffix=".log")
    os.close(fd)
    log, before = Path(name), os.environ.get(RUN_LOG)
    os.environ[RUN_LOG] = name  # the kernels append a line per finished run; printed here
    stop = threading.Event()
    follower = threading.Thread(target=follow_run_log, args=(log, stop, tqdm.write), daemon=True)
    follower.start()
    try:
        results = []
        if jobs > 1:  # processes, not threads: papermill changes the process-wide working folder
            with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                pending, running = list(args), {}
                while pending or running:
                    while len(running) < jobs and (ready := next_ready([a[1] for a in pending], running)):
                        a = next(a for a in pending if a[1] == ready)
                        pending.remove(a)
                        running[ready] = pool.submit(_execute_one, *a)
                    finished = next(as_completed(running.values()))
                    del running[next(nb for nb, f in running.items() if f is finished)]
                    results.append(finished.result())
                    bar.update()
            order = {a[1]: i for i, a in enumerate(args)}
            results.sort(key=lambda r: order[r[0]])
        else:
            for a in args:
                results.append(_execute_one(*a))
                bar.update()
    finally:
        stop.set()
        follower.join()
        log.unlink(missing_ok=True)
        if before is None:
            del os.environ[RUN_LOG]
        else:
            os.environ[RUN_LOG] = before
    bar.close()
    _write_build_info(profile, out_root, {nb: seconds for nb, _, seconds in results})
    failures = {nb: why for nb, why, _ in results if why}
    if profile.get("publish") and not failures and not only and not runs_dir:
        publish(profile["name"], out_root)
    return failures


def next_ready(pending: list[str], running: dict) -> str | None:
    """The first of `pending` (in profile order) none of whose `REUSES_RUNS_OF` chapters is
    still pending or running; None when every pending one waits."""
    waiting = set(pending) | set(running)
    return next((nb for nb in pending if not waiting.intersection(REUSES_RUNS_OF.get(nb, ()))), None)


def follow_run_log(path: Path, stop: threading.Event, write=print, poll: float = 0.5) -> None:
    """Print each line the kernels append to `path` (`experiment.RUN_LOG`) until `stop` is
    set and nothing is left to read: the terminal sees every run as it finishes."""
    with open(path, encoding="utf-8") as log:
        pending = ""
        while True:
            finished = stop.is_set()  # read once more after stop: nothing written before it is lost
            pending += log.read()
            *lines, pending = pending.split("\n")
            for line in lines:
                write(line)
            if finished:
                return
            stop.wait(poll)


def run_notebook(source: Path, output: Path, parameters: dict | None = None) -> None:
    """papermill in the notebooks' folder, the kernel on IPC sockets in a folder of its own: a
    local kernel needs no TCP port, and ipykernel warns about unencrypted TCP once per
    notebook otherwise (kernels run side by side with --jobs, so each gets its own folder)."""
    import papermill
    from jupyter_client.manager import KernelManager

    with tempfile.TemporaryDirectory(prefix="cooplib-kernel-") as sockets:
        class IPCKernelManager(KernelManager):
            def __init__(self, **kwargs):
                kwargs.setdefault("transport", "ipc")
                kwargs.setdefault("ip", os.path.join(sockets, "kernel"))
                super().__init__(**kwargs)

        papermill.execute_notebook(str(source), str(output), parameters=parameters or {}, cwd=str(NOTEBOOKS),
                                   kernel_name="python3", progress_bar=False, kernel_manager_class=IPCKernelManager)


def _execute_one(profile: str, nb: str, parameters: dict, output: Path) -> tuple[str, str | None, float]:
    """Execute one notebook into `output`; return (name, why it failed or None, seconds)."""
    import papermill

    print(f"[cooplib.book] {profile}: executing {nb} -> {_shown(output)}", flush=True)
    t0 = time.perf_counter()
    why = None
    try:
        run_notebook(NOTEBOOKS / f"{nb}.ipynb", output, parameters)
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


def jupyter_book(root: Path = REPO_ROOT, toc: Path | None = None) -> Path:
    """`jupyter-book build` of a book tree (execution off, MathJax local); its index.html.
    `toc`: another table of contents than the tree's `_toc.yml`."""
    offline_assets(root)
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(root), "--path-output", str(root)]
    if toc is not None:
        cmd += ["--toc", str(toc)]
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
    not_run = chapters_not_in_profile(_executed_profile())
    missing = [e["file"] for e in _toc_chapters() if e["file"] not in not_run
               and not (REPO_ROOT / f"{e['file']}.ipynb").exists() and not (REPO_ROOT / f"{e['file']}.md").exists()]
    if missing or not (EXECUTED / "build_info.md").exists():
        raise ConfigError(
            f"nothing to build yet ({', '.join(missing) or 'build_info.md'} missing): "
            f"run `python -m cooplib.book run --profile smoke` first (or `make book`)"
        )
    index = jupyter_book(REPO_ROOT, toc=toc_without(not_run) if not_run else None)
    print(f"[cooplib.book] open {index}")
    return index


def write_findings() -> Path:
    """book/_executed/findings.md: every chapter's verdicts, read back from the executed notebooks."""
    from ..report import findings

    name = _executed_profile()
    try:
        profile = load_profile(name) if name else None
    except ConfigError:
        profile = None
    not_run = chapters_not_in_profile(name)
    chapters = [Path(e["file"]).name for e in _toc_chapters()
                if e["file"].startswith("book/_executed/") and e["file"] not in not_run]
    return findings.write(EXECUTED, chapters, profile)


def chapters_not_in_profile(profile: str | None) -> set[str]:
    """The executed-notebook chapters of `_toc.yml` that `profile` does not run (a profile
    sized for a CPU budget may leave a chapter out); empty when the profile is unknown."""
    try:
        ran = set(load_profile(profile)["notebooks"]) if profile else None
    except ConfigError:
        ran = None
    if ran is None:
        return set()
    return {e["file"] for e in _toc_chapters()
            if e["file"].startswith("book/_executed/") and Path(e["file"]).name not in ran | {"findings"}}


def toc_without(files: set[str], path: Path | None = None) -> Path:
    """A copy of `_toc.yml` without the chapters `files`, written to `path` (default: under _build/)."""
    toc = yaml.safe_load((REPO_ROOT / "_toc.yml").read_text())
    for part in toc.get("parts", []):
        part["chapters"] = [c for c in part.get("chapters", []) if c["file"] not in files]
    toc["parts"] = [p for p in toc.get("parts", []) if p["chapters"]]
    path = path or BUILD / "_toc.profile.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(toc, sort_keys=False))
    return path


def _toc_chapters() -> list[dict]:
    toc = yaml.safe_load((REPO_ROOT / "_toc.yml").read_text())
    entries = []
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        entries.extend(part.get("chapters", []))
    return entries


def reference(only: list[str] | None = None) -> None:
    """Re-execute notebooks/ in place with their defaults (= the smoke profile) for nbval."""
    names = only or [p.stem for p in sorted(NOTEBOOKS.glob("*.ipynb"))]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["COOPLIB_RUNS_DIR"] = tmp
        os.environ["COOPLIB_PROGRESS"] = "0"
        os.environ["COOPLIB_STATIC"] = "1"
        for nb in names:
            path = NOTEBOOKS / f"{nb}.ipynb"
            print(f"[cooplib.book] reference outputs for {path.relative_to(REPO_ROOT)}", flush=True)
            run_notebook(path, path)


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
