"""Profiles are validated against the notebooks before anything runs."""
import os
import re

import pytest
import yaml

from cooplib.base import profiles
from cooplib.book import make
from cooplib.base.errors import ConfigError


def test_every_profile_names_only_declared_parameters():
    for name in profiles.profile_names():
        plan = profiles.validate(profiles.load_profile(name))
        assert plan, name


def test_notebook_parameters_are_parsed_with_ast():
    params = profiles.notebook_parameters("baseline")
    # a comment containing '=' made papermill's own parser skip this line
    assert params["train_size"] == "None" and params["dataset"] == "'digits'"
    assert set(profiles.INJECTED) <= set(params)


def _profile(tmp_path, notebooks):
    path = tmp_path / "mine.yml"
    path.write_text(yaml.safe_dump({"description": "test", "notebooks": notebooks}))
    return profiles.load_profile(str(path))


def test_mistyped_parameter_is_an_error_with_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown parameter 'epoch'.*did you mean 'epochs'"):
        profiles.validate(_profile(tmp_path, {"baseline": {"epoch": 3}}))


def test_unknown_profile_notebook_and_reserved_parameter(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'smoke'"):
        profiles.load_profile("smoek")
    with pytest.raises(ConfigError, match="did you mean 'baseline'"):
        profiles.validate(_profile(tmp_path, {"baselin": {}}))
    with pytest.raises(ConfigError, match="set by cooplib.book"):
        profiles.validate(_profile(tmp_path, {"baseline": {"out_dir": "/x"}}))
    with pytest.raises(ConfigError, match="has no notebook 'nosuch'"):
        profiles.validate(profiles.load_profile("smoke"), only=["nosuch"])


def test_cli_reports_config_errors_without_traceback(capsys):
    assert make.main(["run", "--profile", "smoek"]) == 2
    assert "did you mean 'smoke'" in capsys.readouterr().err


def test_profile_values_must_have_the_type_of_the_notebook_default(tmp_path):
    with pytest.raises(ConfigError, match=r"notebook 'baseline': seeds must be a list like \[0, 1\], got 0"):
        profiles.validate(_profile(tmp_path, {"baseline": {"seeds": 0}}))
    with pytest.raises(ConfigError, match=r"epochs must be an integer like 30, got '3'"):
        profiles.validate(_profile(tmp_path, {"baseline": {"epochs": "3"}}))
    # YAML 1.1 reads 5e-4 (no dot) as text; profiles read it as the number people mean
    path = tmp_path / "wd.yml"
    path.write_text("notebooks:\n  baseline:\n    weight_decay: 5e-4\n    lr: 1E-1\n    dataset: digits\n")
    plan = profiles.validate(profiles.load_profile(str(path)))
    assert plan["baseline"] == {"weight_decay": 5e-4, "lr": 0.1, "dataset": "digits"}


def test_every_notebook_declares_cluster_and_the_profiles_cluster_reaches_it(tmp_path):
    """A profile's `cluster:` (a spec string or a jobqueue mapping) becomes every notebook's
    `cluster` parameter, survives papermill's injection, and is not a hand-set parameter."""
    import nbformat
    from papermill.parameterize import parameterize_notebook

    names = sorted(p.stem for p in profiles.NOTEBOOKS.glob("*.ipynb"))
    assert len(names) == 9 and all(profiles.notebook_parameters(nb).get("cluster") == "None" for nb in names)
    slurm = {"slurm": {"cores": 4, "memory": "8GB", "job_extra_directives": ["--gres=gpu:1"], "jobs": 2}}
    for spec in ("local:2", slurm):
        path = tmp_path / "cluster.yml"
        path.write_text(yaml.safe_dump({"cluster": spec, "notebooks": {"baseline": {"epochs": 3}, "dml": None,
                                                                      "one": {"cluster": "serial"}}}))
        plan = profiles.validate(profiles.load_profile(str(path)))
        assert plan == {"baseline": {"epochs": 3, "cluster": spec}, "dml": {"cluster": spec}, "one": {"cluster": "serial"}}
    nb = nbformat.read(profiles.NOTEBOOKS / "baseline.ipynb", as_version=4)
    declared = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    injected = next(c.source for c in parameterize_notebook(nb, {"profile": "smoke", "cluster": slurm}).cells
                    if "injected-parameters" in c.metadata.get("tags", []))
    namespace: dict = {}
    exec(declared + "\n" + injected, namespace)
    assert namespace["cluster"] == slurm
    profiles.check_notebook_parameters("baseline", {**namespace, "In": [declared, injected]})
    assert profiles.LAST_CHECK["hand_set"] == {}  # where the runs execute does not change the page's numbers
    for bad, why in (("lokal:2", "unknown cluster 'lokal:2'"), (4, "cluster must be a string"), ({"slurm": 4}, "must be a mapping")):
        path.write_text(yaml.safe_dump({"cluster": bad, "notebooks": {"baseline": None}}))
        with pytest.raises(ConfigError, match=why):
            profiles.load_profile(str(path))
    with pytest.raises(ConfigError, match=r"notebook 'baseline': cluster 'local:0': expected local:N"):
        profiles.validate(_profile(tmp_path, {"baseline": {"cluster": "local:0"}}))


def test_notebook_guard_catches_what_papermill_only_warns_about():
    declared = {k: eval(v) for k, v in profiles.notebook_parameters("baseline").items()}  # the defaults
    ok = {**declared, "In": ["", "# parameters\nepochs = 30", "# Parameters\nepochs = 3\n"]}
    profiles.check_notebook_parameters("baseline", {**ok, "epochs": 3})
    typo = {**declared, "epohcs": 3, "In": ["# Parameters\nepohcs = 3\n"]}
    with pytest.raises(ConfigError, match=r"notebook 'baseline': unknown parameter 'epohcs' \(did you mean 'epochs'\?\)"):
        profiles.check_notebook_parameters("baseline", typo)
    with pytest.raises(ConfigError, match=r"parameter seeds must be a list like \[0, 1\], got 0"):
        profiles.check_notebook_parameters("baseline", {**declared, "seeds": 0, "In": ["# Parameters\nseeds = 0\n"]})
    # opened by hand (no injected cell): variables of later cells are not parameters
    profiles.check_notebook_parameters("baseline", {**declared, "base": object(), "In": ["x = 1"]})


def test_a_failing_notebook_does_not_stop_the_batch(tmp_path, monkeypatch, capsys):
    import nbformat

    monkeypatch.setattr(make, "EXECUTED", tmp_path / "executed")
    (tmp_path / "executed").mkdir()
    stale = nbformat.v4.new_notebook(metadata={"papermill": {"parameters": {"profile": "paper"}}})
    nbformat.write(stale, tmp_path / "executed" / "robustness.ipynb")
    path = tmp_path / "broken.yml"
    path.write_text("notebooks:\n  baseline:\n    dataset: nosuch\n  dml:\n    dataset: nosuch2\n")
    cwd = os.getcwd()
    assert make.main(["run", "--profile", str(path), "--runs-dir", str(tmp_path / "runs"), "--jobs", "2"]) == 1
    assert os.getcwd() == cwd  # concurrent notebooks must not leave the process in another folder
    out = capsys.readouterr().out
    assert "0 of 2 notebook(s) executed, 2 FAILED" in out
    assert re.search(r"baseline\s+In \[\d+\]: SweepError: .*unknown dataset 'nosuch'", out)
    assert re.search(r"dml\s+In \[\d+\]: SweepError: .*unknown dataset 'nosuch2'", out)
    assert sorted(p.name for p in (tmp_path / "executed").glob("*.ipynb")) == ["baseline.ipynb", "dml.ipynb"]


def test_runs_root_is_the_profiles_whatever_the_working_folder(tmp_path, monkeypatch):
    """JupyterLab (cwd notebooks/), papermill elsewhere and cooplib.book find the same runs."""
    from cooplib.engine import experiment

    monkeypatch.delenv("COOPLIB_RUNS_DIR", raising=False)
    expected = profiles.runs_dir_for(profiles.load_profile("smoke"))
    for folder in (profiles.NOTEBOOKS, tmp_path):
        monkeypatch.chdir(folder)
        assert experiment.runs_root(None, "smoke") == expected
    assert expected == (profiles.REPO_ROOT / "runs" / "smoke").resolve()
    assert experiment.runs_root(tmp_path / "x", "smoke") == (tmp_path / "x").resolve()  # an explicit folder wins
    monkeypatch.setenv("COOPLIB_RUNS_DIR", str(tmp_path / "env"))
    assert experiment.runs_root(None, "smoke") == (tmp_path / "env").resolve()


def test_executed_code_is_collapsed_and_removed_cells_keep_their_tags(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1"), nbformat.v4.new_markdown_cell("text"),
                                         nbformat.v4.new_code_cell("2", metadata={"tags": ["remove-cell"]})])
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    make.collapse_code(path)
    tags = [c.metadata.get("tags") for c in nbformat.read(path, as_version=4).cells]
    assert tags == [["hide-input"], [], ["remove-cell"]]


def test_published_profile_keeps_notebooks_and_records_without_weights(tmp_path, monkeypatch):
    import nbformat

    for name in ("EXECUTED", "PUBLISHED"):
        monkeypatch.setattr(make, name, tmp_path / name.lower())
    make.EXECUTED.mkdir()
    nb = nbformat.v4.new_notebook(metadata={"papermill": {"parameters": {"profile": "real"}}})
    nbformat.write(nb, make.EXECUTED / "one.ipynb")
    (make.EXECUTED / "build_info.md").write_text("built by real")
    run = tmp_path / "runs" / "one-run"
    run.mkdir(parents=True)
    for f in (*make.RECORD_FILES, "model-0003.safetensors", "checkpoint-0003.pt", "commit.json"):
        (run / f).write_text(f)
    (run / "config.json").write_text(f'{{"teacher": "{profiles.REPO_ROOT}/runs/real/teacher-run"}}')
    target = make.publish("real", tmp_path / "runs")
    assert sorted(p.name for p in (target / "records" / "one-run").iterdir()) == sorted(make.RECORD_FILES)
    assert (target / "records" / "one-run" / "config.json").read_text() == '{"teacher": "runs/real/teacher-run"}'

    # another profile executed since: the build of "real" restores the published notebooks
    other = nbformat.v4.new_notebook(metadata={"papermill": {"parameters": {"profile": "smoke"}}})
    nbformat.write(other, make.EXECUTED / "one.ipynb")
    assert make._executed_profile() == "smoke"
    make._restore_published("real")
    assert make._executed_profile() == "real" and (make.EXECUTED / "build_info.md").read_text() == "built by real"
    with pytest.raises(ConfigError, match="no published book"):
        make._restore_published("nothing")


def test_tables_render_as_html_without_index_and_prose_as_markdown():
    import pandas as pd

    from cooplib.base import stats
    from cooplib.report import present

    frame = pd.DataFrame({"method": ["a", "b"], "top-1 %": [91.25, 90.5]}, index=[7, 9])
    shown = present.table(frame, caption="mean over seeds")
    html = shown._repr_html_()
    assert "<caption>mean over seeds</caption>" in html and ">7<" not in html and ">9<" not in html
    assert "<th>method</th>" in html and "91.25" in html
    assert repr(shown) == "mean over seeds\n" + frame.to_string(index=False)
    v = stats.decide([1.0, 2.0, 3.0], "a beats b")
    assert present.verdicts([v])._repr_markdown_() == f"- {v.sentence}"
    assert present.prose("One.", "", "Two.")._repr_markdown_() == "One.\n\nTwo."


def test_explorer_static_view_and_panel(monkeypatch):
    """The static view shows every run; the panel's table follows what is picked."""
    import pandas as pd

    from cooplib.report import explore

    rows = [{"label": lab, "seed": s, "epoch": e, "test/net/top1": 50 + e + s + (5 if lab == "b" else 0),
             "test/net/loss": 1.0 / e, "train/net/top1": 60.0 + e}
            for lab in ("a", "b") for s in (0, 1) for e in (1, 2, 3)]
    metrics = pd.DataFrame(rows)
    monkeypatch.setenv("COOPLIB_STATIC", "1")
    table = explore.explorer(metrics).frame
    assert list(table["label"]) == ["a", "b"]
    assert list(table["test top-1 % (last epoch)"]) == [report_mean("53", "54"), report_mean("58", "59")]
    picked = explore.last_epoch_table(metrics, variants=["b"], seeds=[1])
    assert list(picked["seeds"]) == ["1"] and picked["test top-1 % (last epoch)"].iloc[0].startswith("59.00")
    monkeypatch.setenv("COOPLIB_STATIC", "0")
    panel = explore.explorer(metrics)
    assert type(panel.widget).__name__ == "VBox"
    bundle = panel._repr_mimebundle_()
    # a live frontend draws the widget; one without its state shows the static view, not the VBox repr
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "data:image/png;base64," in bundle["text/html"] and "test top-1 % (last epoch)" in bundle["text/html"]
    assert "VBox" not in bundle["text/plain"]


def test_explorer_curves_keep_at_most_six_lines_a_panel(monkeypatch):
    """24 (variant, head) lines become panels of at most MAX_LINES lines, every line drawn once."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from cooplib.report import explore

    heads = [f"branch{i}" for i in range(4)] + ["ensemble", "average"]
    rows = [{"label": lab, "seed": s, "epoch": e, **{f"test/{h}/top1": 50.0 + e for h in heads}}
            for lab in ("A", "B", "C", "D") for s in (0, 1) for e in (1, 2, 3)]
    fig = explore.curves(pd.DataFrame(rows))
    drawn = [ax for ax in fig.axes if ax.get_visible() and ax.lines]
    assert len(drawn) == 4 and all(len(ax.lines) <= explore.MAX_LINES for ax in drawn)
    assert sum(len(ax.lines) for ax in drawn) == 24 and {ax.get_title() for ax in drawn} == {f"label: {v}" for v in "ABCD"}
    plt.close(fig)
    few = explore.curves(pd.DataFrame([r for r in rows if r["label"] == "A"]), heads=["branch0", "ensemble"])
    assert len([ax for ax in few.axes if ax.lines]) == 1  # 2 lines: one panel
    plt.close(few)


def report_mean(*values):
    import pandas as pd

    from cooplib.report.tables import mean_std

    return mean_std(pd.Series([float(v) for v in values]))


def test_notebooks_run_on_ipc_kernels_without_the_tcp_warning(tmp_path, capfd):
    """The book's kernels listen on IPC sockets: no port, and no unencrypted-TCP warning per notebook."""
    nbformat = pytest.importorskip("nbformat")
    source = tmp_path / "a.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")]), source)
    make.run_notebook(source, tmp_path / "b.ipynb")
    assert nbformat.read(tmp_path / "b.ipynb", as_version=4).cells[0].outputs[0]["text"] == "42\n"
    assert "without encryption" not in capfd.readouterr().err


def test_run_log_lines_reach_the_terminal_whole_and_none_is_lost(tmp_path):
    """The book follows the file its kernels append to: a line written in two pieces is
    printed once, whole; lines written just before the stop are still printed."""
    import threading
    import time

    log = tmp_path / "runs.log"
    log.write_text("")
    printed, stop = [], threading.Event()
    follower = threading.Thread(target=make.follow_run_log, args=(log, stop, printed.append, 0.01))
    follower.start()
    with open(log, "a") as f:
        f.write("[cooplib] a: trained, 3 epochs, 1.0 s\n[cooplib] b: tra")
        f.flush()
        time.sleep(0.05)
        f.write("ined, 3 epochs, 2.0 s\n")
        f.write("[cooplib] c: reused, 3 epochs, 0.1 s\n")
    stop.set()
    follower.join(5)
    assert printed == ["[cooplib] a: trained, 3 epochs, 1.0 s", "[cooplib] b: trained, 3 epochs, 2.0 s",
                       "[cooplib] c: reused, 3 epochs, 0.1 s"]


def test_chapters_that_reuse_runs_start_after_the_chapters_that_train_them():
    """With --jobs, representations waits for kd_zoo and robustness for baseline, one and dml
    (a kernel waiting on another's run lock would print a path and a pid into its page);
    otherwise the profile's order."""
    order = ["baseline", "one", "robustness", "kd_zoo", "representations", "dml"]
    assert make.next_ready(order, {}) == "baseline"
    assert make.next_ready(order[2:], {"one": None}) == "kd_zoo"  # robustness waits for one, then for dml
    assert make.next_ready(["robustness", "representations", "dml"], {"kd_zoo": None}) == "dml"
    assert make.next_ready(["robustness", "representations"], {"dml": None}) == "representations"
    assert make.next_ready(["robustness", "representations"], {"dml": None, "kd_zoo": None}) is None
    assert make.next_ready(["robustness", "representations"], {}) == "robustness"
    assert make.next_ready(["representations"], {"robustness": None}) == "representations"
    # every dependency is a chapter of the book, and none depends on itself through another
    chapters = {p.stem for p in make.NOTEBOOKS.glob("*.ipynb")}
    assert all({nb, *deps} <= chapters and not any(nb in make.REUSES_RUNS_OF.get(d, ()) for d in deps)
               for nb, deps in make.REUSES_RUNS_OF.items())


def test_book_run_restores_the_run_log_setting(tmp_path, monkeypatch):
    from cooplib.engine import experiment

    monkeypatch.setattr(make, "EXECUTED", tmp_path / "executed")
    monkeypatch.setenv(experiment.RUN_LOG, "1")
    path = tmp_path / "broken.yml"
    path.write_text("notebooks:\n  baseline:\n    dataset: nosuch\n")
    assert make.main(["run", "--profile", str(path), "--runs-dir", str(tmp_path / "runs")]) == 1
    assert os.environ[experiment.RUN_LOG] == "1"


def test_every_chapter_that_trains_several_arms_has_an_explorer():
    """Chapters whose runs they train themselves and compare (robustness and representations
    analyse the runs of other chapters, which have their explorers there)."""
    import json

    for nb in ("one", "dml", "branch_expansion", "cooperative_depth", "kd_zoo"):
        cells = json.loads((profiles.NOTEBOOKS / f"{nb}.ipynb").read_text())["cells"]
        sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        assert any("explore.explorer(" in s for s in sources), nb


def test_a_profile_without_a_chapter_builds_a_table_of_contents_without_it(tmp_path):
    assert make.chapters_not_in_profile("smoke") == set()  # the smoke book has every chapter
    left_out = make.chapters_not_in_profile("fashion")
    assert left_out == {"book/_executed/online_zoo"}
    toc = yaml.safe_load(make.toc_without(left_out, tmp_path / "toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    assert "book/_executed/online_zoo" not in files and "book/_executed/dml" in files and "book/_executed/findings" in files


def test_parameter_lines_parse_for_papermill():
    """papermill skips (and warns about) a parameter line with more than one '=', then calls
    the parameter unknown: the build terminal would fill with both warnings."""
    import json

    for path in sorted(profiles.NOTEBOOKS.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        source = "".join(next(c for c in cells if "parameters" in c["metadata"].get("tags", []))["source"])
        assert [l for l in source.splitlines() if l.count("=") > 1] == [], path.name
