"""How a notebook shows its results: prose computed from runs, HTML tables, page facts.

A chapter reads as a report: its headline sentences are Markdown produced from the run
records (`prose`, `verdicts`), so no hand-written sentence states a number or a
direction a run could contradict; tables render as HTML without the pandas index
(`table`); every page ends with where its numbers came from (`provenance`). Each object
also has a plain-text form, so nbval compares what it shows and `print` still works.
"""
from __future__ import annotations

import html
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Iterable

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent


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


def verdicts(items, lead: str | None = None) -> Prose:
    """Each `report.Verdict` as one bullet: the claim, its interval and what it supports."""
    return bullets((v.sentence for v in items), lead)


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


def profile_note(profile: str) -> Prose:
    """What the profile's numbers can and cannot show, from its own description."""
    from . import book
    from .errors import ConfigError

    try:
        description = " ".join(str(book.load_profile(profile).get("description", "")).split())
    except ConfigError:
        description = ""
    return Prose(f"These numbers come from the **`{profile}`** profile" + (f": {description}" if description else "."))
