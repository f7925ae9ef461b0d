"""Every published number says exactly where it comes from (issue: "evidence that holds")."""
import re

from cooplib.report import published


def _entries():
    for group in (published.ONE_CIFAR100_ERROR["resnet32"], published.ONE_CIFAR100_ERROR["resnet110"],
                  published.ONE_BRANCH_COUNT_ERROR, published.ONE_ABLATION_ERROR, published.DML_PACKAGE_CIFAR100_TOP1,
                  *published.ONE_COST_FLOPS.values(),
                  *({m: one for m, (one, _) in rows.items()} for rows in published.MCL_OKD_CIFAR100_ERROR.values())):
        yield from group.items()


def test_every_entry_names_table_or_repository_file_runs_and_epoch():
    for name, e in _entries():
        assert isinstance(e, published.Published), name
        assert re.search(r"Tables? \d|README\.md", e.source), (name, e.source)
        assert e.runs and e.epoch in ("best", "last", ""), name
        assert e.source in e.label and e.runs in e.label


def test_dml_numbers_are_labelled_by_their_real_origin():
    one_paper_dml = published.ONE_CIFAR100_ERROR["resnet32"]["DML"]
    assert (one_paper_dml.value, one_paper_dml.std) == (29.03, 0.22) and "ONE paper" in one_paper_dml.source
    assert "Table 2" in one_paper_dml.source and published.ONE_CIFAR100_ERROR["resnet110"]["DML"].text == "24.1 ± 0.72"
    for k, e in published.DML_PACKAGE_CIFAR100_TOP1.items():
        assert "examples/CIFAR100/README.md" in e.label and "single run (seed 42)" in e.label and e.epoch == "last"
    assert not any("DML paper" in e.source for _, e in _entries())  # its table is not among the sources


def test_dml_table_shows_the_source_and_no_verdict_for_single_runs():
    t = published.dml_table()
    assert list(t["peers"]) == [2, 3, 4, 5, 6, 7]
    assert t.loc[0, "package gain over one net"] == "+0.93 (single runs, no interval)"
    assert t["source"].str.contains("seed 42").all()


def test_mcl_okd_row_is_the_readme_row_with_its_source():
    """winycg/MCL-OKD README.md (commit 0661c436), ResNet-32 row: one peer (ensemble)."""
    t = published.mcl_okd_table("resnet32").set_index("method")
    assert t.loc["CL-ILR", "published: error % (one peer)"] == "25.40"
    assert t.loc["MCL-OKD", "published: error % (ensemble)"] == "22.00"
    assert t.loc["baseline", "published: error % (ensemble)"] == "—"
    assert list(t.index) == ["baseline", "DML", "CL-ILR", "ONE", "OKDDip", "MCL-OKD"]
    assert all("winycg/MCL-OKD, README.md" in s for s in t["source"])
    for method, (one, ens) in published.MCL_OKD_CIFAR100_ERROR["resnet110"].items():
        assert ens is None or ens.value < one.value, method  # the README's ensembles beat one peer
