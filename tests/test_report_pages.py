"""The stored smoke outputs of every chapter read as an honest report.

Checks over the executed notebooks (their stored outputs are the smoke profile's
reference): each page says what ran (from the runs' records) and that smoke verdicts are a
wiring check; no numpy repr leaks into the text; no verdict is decided on zero spread; and
every verdict carries its record for the Findings page.
"""
import json
import re
from pathlib import Path

import pytest

from cooplib.report import findings

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def _texts(nb: dict) -> list[str]:
    out = []
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            for key in ("text/markdown", "text/plain", "text/html"):
                if key in data:
                    out.append("".join(data[key]) if isinstance(data[key], list) else data[key])
            if "text" in o:
                out.append("".join(o["text"]) if isinstance(o["text"], list) else o["text"])
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_page_says_what_ran_and_that_smoke_is_a_wiring_check(path):
    text = "\n".join(_texts(json.loads(path.read_text())))
    assert re.search(r"What ran: \d+ runs?; ", text), f"{path.name}: no run-derived 'What ran' line"
    assert "wiring check, not evidence" in text, f"{path.name}: the smoke page does not say its verdicts are a wiring check"
    assert not re.search(r"\bnp\.(int|float|bool|str)_?\d*\(", text), f"{path.name}: a numpy repr is shown"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_verdict_is_decided_on_zero_spread(path):
    for rec in findings.collect(path):
        if rec["status"] in ("supported", "contradicted"):
            assert rec["ci_low"] is not None and rec["ci_high"] is not None
            assert rec["ci_high"] > rec["ci_low"], f"{path.name}: {rec['claim']} decided on a zero-width interval"


def test_every_chapter_with_verdicts_records_them():
    """The chapters whose pages state verdicts carry their records (the Findings page is never empty)."""
    recorded = {p.stem for p in NOTEBOOKS if findings.collect(p)}
    stated = {p.stem for p in NOTEBOOKS if re.search(r"\b(supported|contradicted|not resolved)\b",
                                                     "\n".join(_texts(json.loads(p.read_text()))))}
    assert stated - recorded == set(), f"pages state verdicts without records: {sorted(stated - recorded)}"
