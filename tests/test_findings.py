"""The Findings page, the provenance note and the build's training cost: computed, never typed."""
import json

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from cooplib.base import profiles
from cooplib.book import make
from cooplib.report import findings, present
from cooplib.base import stats


def _verdict_output(verdicts, table=False):
    shown = present.verdict_table(verdicts) if table else present.verdicts(verdicts)
    return new_output("display_data", data=shown._repr_mimebundle_())


def _executed(path, profile="fashion"):
    up = stats.decide([1.0, 1.2, 0.9], "B better than A")
    unsure = stats.decide([0.5, -0.7, 0.1], "C better than A", confounds=("lr", "epochs"))
    other = stats.decide([2.0, 2.5, 2.2], "D better than A", caveats=("underfit: train error 18.0 % (A)",))
    nb = new_notebook(cells=[
        new_markdown_cell("# ONE: an ensemble\n\nintro"),
        new_markdown_cell("## Baseline against ONE"),
        new_code_cell("x", outputs=[_verdict_output([up, unsure], table=True)]),
        new_code_cell("y", outputs=[_verdict_output([up])]),  # the same claim again: counted once
        new_markdown_cell("### 3. Ablations (paper Table 5)"),
        new_code_cell("z", outputs=[_verdict_output([other])]),
    ])
    nb.metadata["papermill"] = {"parameters": {"profile": profile}}
    nbformat.write(nb, str(path))
    return up, unsure, other


def test_anchor_follows_docutils_ids():
    assert findings.anchor("Baseline against ONE") == "baseline-against-one"
    assert findings.anchor("3. Ablations (paper Table 5)") == "ablations-paper-table-5"
    assert findings.anchor("Beside the published numbers") == "beside-the-published-numbers"


def test_gather_reads_every_verdict_once_with_its_section(tmp_path):
    up, unsure, other = _executed(tmp_path / "one.ipynb")
    frame = findings.gather([tmp_path / "one.ipynb"])
    assert frame["claim"].tolist() == [up.claim, unsure.claim, other.claim]
    assert frame["section"].tolist() == ["Baseline against ONE", "Baseline against ONE", "3. Ablations (paper Table 5)"]
    assert set(frame["chapter"]) == {"ONE: an ensemble"}
    assert frame["status"].tolist() == ["supported", "not resolved", "supported"]
    assert frame["half_width"].iloc[0] == pytest.approx((up.ci_high - up.ci_low) / 2)
    assert list(frame["confounds"].iloc[1]) == ["lr", "epochs"]
    assert frame["profile"].unique().tolist() == ["fashion"]


def test_page_links_sections_and_counts_verdicts(tmp_path):
    _executed(tmp_path / "one.ipynb")
    text = findings.page([tmp_path / "one.ipynb"], {"name": "fashion"})
    assert 'href="one.html#baseline-against-one"' in text
    assert 'href="one.html#ablations-paper-table-5"' in text
    assert "3 claims: 2 supported, 1 not resolved." in text
    assert "## ONE: an ensemble" in text and 'href="#one-an-ensemble"' in text  # overview -> chapter table
    assert "1 are labelled confounded" in text and "1 carry a caveat" in text
    assert "wiring check" not in text
    smoke = findings.page([tmp_path / "one.ipynb"], {"name": "smoke", "evidence": False})
    assert "wiring check, not evidence" in smoke


def test_verdict_records_are_strict_json():
    single = stats.decide([1.0], "one seed")  # no interval: NaN bounds
    record = present.verdict_records([single])[0]
    json.dumps(record, allow_nan=False)
    assert record["ci_low"] is None and record["status"] == "undecidable"


def _namespace(**params):
    ns = {"profile": "smoke", "In": []}
    ns.update({name: eval(src) for name, src in profiles.notebook_parameters("baseline").items() if name != "out_dir"})
    ns.update(params)
    if params:
        ns["In"] = ["# Parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())]
    return ns


def test_profile_note_names_parameters_set_by_hand():
    profiles.check_notebook_parameters("baseline", _namespace(dataset="cifar10", epochs=3))
    note = str(present.profile_note("smoke"))
    assert "parameters set by hand" in note and "dataset = 'cifar10'" in note and "epochs = 3" in note
    assert "8x8 digit" not in note  # the smoke profile's description would be false here
    profiles.check_notebook_parameters("baseline", _namespace())
    note = str(present.profile_note("smoke"))
    assert "`smoke`** profile" in note and "wiring check, not evidence" in note


def test_what_ran_comes_from_the_runs():
    runs = pd.DataFrame({"run_dir": ["a", "b", "c"], "dataset": ["fashion-mnist"] * 3, "data.n_train": [10000] * 3,
                         "data.n_test": [10000] * 3, "model": ["resnet20"] * 3, "epochs_done": [15] * 3, "seed": [0, 1, 2]})
    assert present.what_ran(runs) == ("What ran: 3 runs; fashion-mnist (10,000 training / 10,000 test images); "
                                      "model resnet20; 15 epochs; seeds 0, 1, 2.")


def test_a_page_says_how_many_runs_it_trained_and_how_many_it_reused(tmp_path):
    import os

    dirs = []
    for name, when in (("old-a", 1000.0), ("old-b", 2000.0), ("new", 5000.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "commit.json").write_text("{}")
        os.utime(tmp_path / name / "commit.json", (when, when))
        dirs.append(str(tmp_path / name))
    runs = pd.DataFrame({"run_dir": dirs + [dirs[0]]})  # a run listed twice counts once
    assert present.trained_or_reused(runs, since=3000.0) == (
        "This session trained 1 of these 3 runs and reused the other 2 (complete runs of the same configuration and data).")
    assert present.trained_or_reused(runs, since=9000.0).startswith("All 3 runs were complete already and were reused")
    assert present.trained_or_reused(runs, since=0.0) == "All 3 runs were trained in this session."


def test_training_cost_sums_recorded_seconds(tmp_path):
    for name, method, seconds in (("a", "one", 60.0), ("b", "one", 30.0), ("c", "baseline", 45.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"config": {"method": method}}))
        (tmp_path / name / "final.json").write_text(json.dumps({"seconds": seconds}))
    text = make.training_cost(tmp_path)
    assert text.startswith("Training cost: 3 runs recorded 2.2 min")
    assert "baseline 0.8 min (1 runs), one 1.5 min (2 runs)" in text


def test_power_calculation_inverts_the_interval():
    from scipy import stats as sps

    v = stats.decide([0.2, -0.3, 0.5, 0.1], "x")
    sd = stats.sd_from_interval(v.n, v.ci_low, v.ci_high)
    assert sd == pytest.approx(float(pd.Series([0.2, -0.3, 0.5, 0.1]).std()))
    n = stats.seeds_for_half_width(0.38, 1.0)
    assert sps.t.ppf(0.975, n - 1) * 0.38 / n ** 0.5 <= 1.0 < sps.t.ppf(0.975, n - 2) * 0.38 / (n - 1) ** 0.5
    assert n == 3 and stats.seeds_for_half_width(0.84, 0.5) == 14
    assert stats.seeds_for_half_width(50.0, 0.01) is None
