"""The Findings page: every verdict of every chapter, gathered from the executed notebooks.

Each chapter shows its verdicts through `present.verdicts` / `present.verdict_table`,
whose output carries the verdicts' records under `present.VERDICT_MIME` (a mime type the
book does not render). This module reads those records back from the executed notebooks,
with the chapter and section they appeared in, and writes one Markdown page: claim, n,
difference [95 % CI], half-width, verdict, confounds and caveats, and a link to the
section. Nothing on it is typed by hand, so it cannot disagree with the chapters.
"""
from __future__ import annotations

import html
import json
import math
import re
import unicodedata
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..base import stats
from .present import VERDICT_MIME

#: a comparison in top-1 points is "precise" when its 95 % half-width is at most this
TARGET_HALF_WIDTH = 1.0
STATUSES = ("supported", "contradicted", "not resolved", "undecidable")


def anchor(title: str) -> str:
    """The HTML id Sphinx gives a section titled `title` (docutils' `make_id`)."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"[^a-z0-9]+", "-", text)
    return re.sub(r"^[-0-9]+|-+$", "", text)


def _heading(line: str) -> tuple[int, str] | None:
    m = re.match(r"^(#{1,4})\s+(.*?)\s*#*\s*$", line)
    if not m:
        return None
    text = re.sub(r"[*_`]", "", m.group(2))
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return len(m.group(1)), text.strip()


def collect(notebook: Path) -> list[dict]:
    """The verdict records of one executed notebook, with chapter, section and profile."""
    nb = json.loads(Path(notebook).read_text())
    params = nb.get("metadata", {}).get("papermill", {}).get("parameters", {})
    chapter, section = Path(notebook).stem, None
    out, seen = [], set()
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            for line in source.splitlines():
                h = _heading(line)
                if h and h[0] == 1 and chapter == Path(notebook).stem:
                    chapter = h[1]
                elif h and h[0] >= 2:
                    section = h[1]
            continue
        for output in cell.get("outputs", []):
            for rec in output.get("data", {}).get(VERDICT_MIME, []) or []:
                if rec.get("claim") in seen:
                    continue
                seen.add(rec.get("claim"))
                out.append({**rec, "notebook": Path(notebook).stem, "chapter": chapter,
                            "section": section or chapter, "profile": params.get("profile")})
    return out


def gather(notebooks: Iterable[Path]) -> pd.DataFrame:
    """One row per verdict over the notebooks (in the order given)."""
    rows = [r for nb in notebooks for r in collect(nb)]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["half_width"] = [(h - lo) / 2 if h is not None and lo is not None else math.nan
                           for lo, h in zip(frame["ci_low"], frame["ci_high"])]
    frame["seeds_needed"] = [stats.seeds_for_half_width(stats.sd_from_interval(n, lo, h), TARGET_HALF_WIDTH)
                             if u == "top-1 points" else None
                             for n, lo, h, u in zip(frame["n"], frame["ci_low"], frame["ci_high"], frame["unit"])]
    return frame


def _cell(text: str) -> str:
    return html.escape(str(text)) if text not in (None, "") else ""


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    """An HTML table styled like `present.Table`'s; cells are HTML already (escaped, with links)."""
    body = "\n".join("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for cells in rows)
    return ('<div class="cooplib-table-wrap"><table class="dataframe cooplib-table">\n<thead><tr>'
            + "".join(f"<th>{h}</th>" for h in head) + f"</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>")


def _table(frame: pd.DataFrame) -> str:
    """One chapter's verdicts: the claim (with a link to its section), n, the interval, the
    verdict, the power calculation, and what qualifies the verdict (confounds, caveats)."""
    head = ["claim", "n", "difference [95 % CI]", "verdict", f"seeds for ±{TARGET_HALF_WIDTH:g}", "confounded by · caveats"]
    rows = []
    for r in frame.itertuples():
        link = f'<br><small><a href="{r.notebook}.html#{anchor(r.section)}">{_cell(r.section)}</a></small>'
        need = "" if r.seeds_needed is None or r.seeds_needed != r.seeds_needed else str(int(r.seeds_needed))
        notes = [f"confounded by {', '.join(r.confounds)}"] if r.confounds else []
        notes += list(r.caveats or [])
        cells = [_cell(r.claim) + link, str(r.n), _cell(r.interval) + f"<br><small>{_cell(r.unit)}</small>",
                 f"<strong>{_cell(r.status)}</strong>", need, "<small>" + "<br>".join(_cell(n) for n in notes) + "</small>"]
        rows.append(cells)
    return _html_table(head, rows)


def _overview(frame: pd.DataFrame) -> str:
    """Counts per chapter: verdicts by status, confounded, and top-1 comparisons at the target half-width."""
    head = ["chapter", "claims", *STATUSES, "confounded", f"top-1 half-width ≤ {TARGET_HALF_WIDTH:g}"]
    rows = []
    for notebook, g in frame.groupby("notebook", sort=False):
        top1 = g[g["unit"] == "top-1 points"]
        cells = [f'<a href="#{anchor(g["chapter"].iloc[0])}">{_cell(g["chapter"].iloc[0])}</a>', str(len(g)),
                 *[str(int((g["status"] == s).sum())) for s in STATUSES], str(int(sum(bool(c) for c in g["confounds"]))),
                 f"{int((top1['half_width'] <= TARGET_HALF_WIDTH).sum())} of {len(top1)}"]
        rows.append(cells)
    return _html_table(head, rows)


def summary(frame: pd.DataFrame) -> str:
    """Counts by verdict, confounded ones, and how many top-1 comparisons meet the half-width target."""
    counts = frame["status"].value_counts()
    parts = [f"{int(counts.get(s, 0))} {s}" for s in STATUSES if counts.get(s, 0)]
    confounded = int(sum(bool(c) for c in frame["confounds"]))
    caveated = int(sum(bool(c) for c in frame["caveats"]))
    top1 = frame[frame["unit"] == "top-1 points"]
    precise = int((top1["half_width"] <= TARGET_HALF_WIDTH).sum())
    return (f"{len(frame)} claims: {', '.join(parts)}. {confounded} are labelled confounded (their arms differ in "
            f"more than the treatment), {caveated} carry a caveat (e.g. underfit runs). Of the {len(top1)} comparisons "
            f"in top-1 points, {precise} have a 95 % half-width of at most {TARGET_HALF_WIDTH:g} point.")


def page(notebooks: Iterable[Path], profile: dict | None = None) -> str:
    """The Findings page as MyST Markdown."""
    notebooks = list(notebooks)
    frame = gather(notebooks)
    name = (profile or {}).get("name") or (frame["profile"].dropna().iloc[0] if not frame.empty and frame["profile"].notna().any() else "?")
    lines = ["# Findings", "",
             f"Every verdict the chapters state, gathered from the executed notebooks of the **`{name}`** profile "
             f"(`notebooks/profiles/{name}.yml`). A verdict is "
             "a paired comparison over seeds with its 95 % t-interval: *supported* (the interval lies above 0), "
             "*contradicted* (below 0), *not resolved* (it contains 0) or *undecidable* (fewer than 2 replicates, or "
             "replicates that agree exactly). *Confounded by* names the run settings in which the arms differ beyond "
             "the treatment; *caveats* name underfit runs and other limits. Below the overview, one table per "
             "chapter; each claim links to the section that computed it. For comparisons in top-1 points, "
             f"*seeds for ±{TARGET_HALF_WIDTH:g}* is the power calculation at the spread this build measured: the "
             f"seeds a 95 % half-width of {TARGET_HALF_WIDTH:g} point would need (`stats.seeds_for_half_width`).", ""]
    if profile and profile.get("evidence", True) is False:
        lines += [f"**This build is the `{name}` profile: its verdicts are a wiring check, not evidence.**", ""]
    if frame.empty and notebooks:
        lines.append("The executed notebooks of this build carry no verdict records: they were executed before "
                     "cooplib recorded its verdicts, or no chapter stated one. Re-execute them "
                     f"(`python -m cooplib.book run --profile {name}`) to fill this page.")
    elif frame.empty:
        lines.append("No chapter was executed in this build.")
    else:
        lines += [summary(frame), "", "```{raw} html", _overview(frame), "```", ""]
        for notebook, g in frame.groupby("notebook", sort=False):
            lines += [f"## {g['chapter'].iloc[0]}", "", "```{raw} html", _table(g), "```", ""]
    return "\n".join(lines) + "\n"


def write(executed: Path, notebooks: Iterable[str], profile: dict | None = None) -> Path:
    """Write `executed/findings.md` from the executed notebooks named (in book order)."""
    paths = [executed / f"{nb}.ipynb" for nb in notebooks if (executed / f"{nb}.ipynb").exists()]
    target = executed / "findings.md"
    target.write_text(page(paths, profile))
    return target
