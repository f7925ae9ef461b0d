"""How a notebook shows its results: prose computed from runs, HTML tables, page facts.

A chapter reads as a report: its headline sentences are Markdown produced from the run
records (`prose`, `verdicts`), so no hand-written sentence states a number or a
direction a run could contradict; tables render as HTML without the pandas index
(`table`); every page ends with where its numbers came from (`provenance`). Each object
also has a plain-text form, so nbval compares what it shows and `print` still works.
"""
from __future__ import annotations

import html
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..base.profiles import REPO_ROOT


class Prose:
    """Markdown shown as text of the page (not as a code output)."""

    def __init__(self, markdown: str) -> None:
        self.markdown = markdown

    def _repr_markdown_(self) -> str:
        return self.markdown

    def __repr__(self) -> str:
        return self.markdown

    def __str__(self) -> str:
        return self.markdown


class Table:
    """A DataFrame as an HTML table without index (units belong in the column names)."""

    def __init__(self, frame: pd.DataFrame, caption: str | None = None) -> None:
        self.frame = frame.reset_index(drop=True)
        self.caption = caption

    def _repr_html_(self) -> str:
        body = self.frame.to_html(index=False, border=0, na_rep="", classes="dataframe cooplib-table",
                                  float_format=lambda v: f"{v:.4g}")
        if self.caption:
            body = body.replace(">\n  <thead>", f">\n  <caption>{html.escape(self.caption)}</caption>\n  <thead>", 1)
        return f'<div class="cooplib-table-wrap">{body}</div>'

    def __repr__(self) -> str:
        text = self.frame.to_string(index=False)
        return f"{self.caption}\n{text}" if self.caption else text


def table(frame: pd.DataFrame, caption: str | None = None) -> Table:
    return Table(frame, caption)


def prose(*paragraphs: str) -> Prose:
    """Sentences computed in the notebook, shown as paragraphs of the page."""
    return Prose("\n\n".join(p.strip() for p in paragraphs if p and p.strip()))


def bullets(items: Iterable[str], lead: str | None = None) -> Prose:
    lines = [f"- {i}" for i in items]
    return Prose("\n".join(([lead, ""] if lead else []) + lines))


#: the mime type under which a displayed verdict carries its record (collected by `cooplib.report.findings`)
VERDICT_MIME = "application/vnd.cooplib.verdicts+json"


def _json_safe(value):
    """NaN/inf -> None, tuples -> lists: a notebook's JSON must stay strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def verdict_records(items) -> list[dict]:
    """The records of `stats.Verdict`s as the Findings page reads them."""
    keys = ("claim", "n", "mean", "ci_low", "ci_high", "status", "confidence", "unit", "replicates",
            "confounds", "caveats", "interval", "sentence")
    return [_json_safe({k: v.as_dict().get(k) for k in keys}) for v in items]


class Verdicts(Prose):
    """Verdicts shown as Markdown (or an HTML table) that also carry their records.

    The record travels in the output under `VERDICT_MIME`, which the book does not render,
    so the Findings page is computed from the executed notebooks, never typed.
    """

    def __init__(self, markdown: str, items, html_table: str | None = None) -> None:
        super().__init__(markdown)
        self.records = verdict_records(items)
        self.html_table = html_table

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        bundle = {"text/plain": self.markdown, VERDICT_MIME: self.records}
        if self.html_table is not None:
            bundle["text/html"] = self.html_table
        else:
            bundle["text/markdown"] = self.markdown
        return bundle


def verdicts(items, lead: str | None = None) -> Verdicts:
    """Each `stats.Verdict` as one bullet: the claim, its interval and what it supports."""
    items = list(items)
    return Verdicts(bullets((v.sentence for v in items), lead).markdown, items)


def verdict_table(items, caption: str | None = None) -> Verdicts:
    """The verdicts as an HTML table (claim, n, difference [CI], verdict, confounds), with their records."""
    from .tables import verdict_table as frame

    items = list(items)
    shown = Table(frame(items), caption)
    return Verdicts(repr(shown), items, html_table=shown._repr_html_())


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown commit"
    return f"{sha}{' with local changes' if dirty else ''}" if sha else "unknown commit"


def machine() -> str:
    """The device the numbers were computed on, in words."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU only: {os.cpu_count()} cores of {cpu}"


def provenance(profile: str) -> Prose:
    """The last line of every chapter: which profile, commit and machine made its numbers."""
    import torch

    return Prose(f"*Numbers on this page: profile **`{profile}`** (`notebooks/profiles/{profile}.yml`), "
                 f"cooplib commit `{_commit()}`, torch {torch.__version__}, {machine()}, "
                 f"executed {time.strftime('%Y-%m-%d')}.*")


def _values(frame: pd.DataFrame, column: str) -> list:
    if column not in frame:
        return []
    return sorted({v for v in frame[column].dropna().tolist()}, key=str)


def _join(items) -> str:
    def one(v) -> str:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            return str(v)
        return f"{int(v):,}"

    return ", ".join(one(v) for v in items)


def what_ran(runs: pd.DataFrame) -> str:
    """One sentence computed from the runs' own records: data, sizes, models, epochs, seeds."""
    if runs is None or len(runs) == 0:
        return "No runs were loaded."
    n = runs["run_dir"].nunique() if "run_dir" in runs else len(runs)
    parts = [f"{n} run{'s' if n != 1 else ''}"]
    data = _join(_values(runs, "dataset"))
    sizes = []
    if _values(runs, "data.n_train"):
        sizes.append(f"{_join(_values(runs, 'data.n_train'))} training")
    if _values(runs, "data.n_test"):
        sizes.append(f"{_join(_values(runs, 'data.n_test'))} test images")
    parts.append(data + (f" ({' / '.join(sizes)})" if sizes else ""))
    if _values(runs, "model"):
        parts.append(f"model {_join(_values(runs, 'model'))}")
    epochs = _values(runs, "epochs_done") or _values(runs, "epochs")
    if epochs:
        parts.append(f"{_join(epochs)} epochs")
    if _values(runs, "seed"):
        parts.append(f"seeds {_join(_values(runs, 'seed'))}")
    return "What ran: " + "; ".join(parts) + "."


#: when this module was first imported: a notebook imports it before its runs start, so a
#: run whose commit record is newer was trained (or finished) by this kernel session
SESSION_START = time.time()


def trained_or_reused(runs: pd.DataFrame, since: float | None = None) -> str:
    """How many of `runs` this session trained and how many it reused, from the time of each
    run's last commit (`commit.json`) against `since` (default: this kernel's first import of
    this module). Reuse means a complete run of the same configuration and data was found."""
    if runs is None or len(runs) == 0 or "run_dir" not in runs:
        return ""
    from ..engine.runs import COMMIT

    since = SESSION_START if since is None else since
    dirs = list(dict.fromkeys(str(d) for d in runs["run_dir"]))
    trained = sum(1 for d in dirs if (Path(d) / COMMIT).exists() and (Path(d) / COMMIT).stat().st_mtime >= since)
    if trained == 0:
        return f"All {len(dirs)} runs were complete already and were reused (same configuration and data), none retrained."
    if trained == len(dirs):
        return f"All {len(dirs)} runs were trained in this session."
    return (f"This session trained {trained} of these {len(dirs)} runs and reused the other {len(dirs) - trained} "
            f"(complete runs of the same configuration and data).")


def profile_note(profile: str, runs: pd.DataFrame | None = None) -> Prose:
    """Where the page's numbers come from: the profile (or the parameters set by hand, when
    the notebook's parameters are not its profile's), and what ran, from the runs' records.

    A profile whose YAML says `evidence: false` (the smoke profile) is a wiring check: its
    page says so once, plainly, and points to the published real-data profile's findings.
    """
    from ..base import profiles
    from ..base.errors import ConfigError

    try:
        spec = profiles.load_profile(profile)
    except ConfigError:
        spec = {}
    changed = profiles.LAST_CHECK.get("hand_set") if profiles.LAST_CHECK.get("profile") == profile else None
    if changed:
        settings = ", ".join(f"`{k} = {v!r}`" for k, v in changed.items())
        lines = [f"These numbers come from **parameters set by hand** ({settings}), not from the `{profile}` profile."]
    else:
        description = " ".join(str(spec.get("description", "")).split())
        lines = [f"These numbers come from the **`{profile}`** profile" + (f": {description}" if description else ".")]
    if runs is not None:
        lines.append(" ".join(filter(None, [what_ran(runs), trained_or_reused(runs)])))
    if spec.get("evidence", True) is False and not changed:
        published = [n for n in profiles.profile_names() if n != profile and profiles.load_profile(n).get("publish")]
        where = (f" The questions are answered by the real-data profile `{published[0]}`: its Findings page gathers "
                 f"every verdict (`python -m cooplib.book build --profile {published[0]}`)." if published else "")
        lines.append(f"**Verdicts on this page are a wiring check, not evidence**: a few seeds of tiny networks on "
                     f"small images exercise every code path but cannot resolve the comparisons.{where}")
    return Prose("\n\n".join(lines))
