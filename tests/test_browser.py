"""The built book as a reader opens it: every page in headless Chromium, from file://.

Two books: the smoke book (built from the stored outputs of notebooks/, which are the
smoke profile's executions that nbval checks) and the published real-data book
(book/published/<profile>/). Skipped where no Chromium is installed (.ci/run installs
Debian's `chromium`).
"""
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from cooplib.base import profiles
from cooplib.book import make, check
from cooplib.report import findings

pytestmark = pytest.mark.skipif(check.find_browser() is None,
                                reason="no Chromium installed (Debian: apt install chromium)")

ROOT = profiles.REPO_ROOT


def _book_tree(tmp_path: Path, executed: list[Path], info: str, profile: str) -> Path:
    """A copy of the book's sources with `executed` as its chapters; returns the tree."""
    tree = tmp_path / "book-tree"
    (tree / "book" / "_executed").mkdir(parents=True)
    shutil.copy2(ROOT / "_config.yml", tree / "_config.yml")
    # the chapters the profile runs, as `cooplib.book build` shows them
    not_run = make.chapters_not_in_profile(profile)
    make.toc_without(not_run, tree / "_toc.yml") if not_run else shutil.copy2(ROOT / "_toc.yml", tree / "_toc.yml")
    for md in (ROOT / "book").glob("*.md"):
        shutil.copy2(md, tree / "book" / md.name)
    shutil.copytree(ROOT / "book" / "_assets", tree / "book" / "_assets", ignore=shutil.ignore_patterns("mathjax"))
    for nb in executed:
        target = tree / "book" / "_executed" / nb.name
        shutil.copy2(nb, target)
        make.collapse_code(target)
    (tree / "book" / "_executed" / "build_info.md").write_text(info)
    findings.write(tree / "book" / "_executed", [nb.stem for nb in executed], profiles.load_profile(profile))
    return tree


def _assert_clean(html: Path, forbidden: tuple[str, ...], profile: str) -> None:
    report = check.check(html, forbidden=forbidden)
    chapters = [p for p in report if "_executed" in p and not p.endswith("findings.html")]
    assert len(chapters) == len(profiles.load_profile(profile)["notebooks"]), report.keys()
    assert any(p.endswith("findings.html") for p in report), report.keys()
    bad = {page: problems for page, problems in report.items() if problems}
    assert not bad, "\n".join(f"{page}: {problems}" for page, problems in bad.items())


def test_smoke_book_reads_clean_in_chromium(tmp_path):
    tree = _book_tree(tmp_path, sorted((ROOT / "notebooks").glob("*.ipynb")), "the smoke profile (test build)", "smoke")
    index = make.jupyter_book(tree)
    _assert_clean(index.parent, forbidden=(str(ROOT), str(tree)), profile="smoke")


def test_published_book_reads_clean_in_chromium(tmp_path):
    published = [p for p in sorted(make.PUBLISHED.glob("*")) if (p / "build_info.md").exists()]
    assert published, f"no published book in {make.PUBLISHED}"
    for source in published:
        notebooks = sorted(source.glob("*.ipynb"))
        for nb in notebooks:  # every chapter really comes from the published profile
            assert nbformat.read(nb, as_version=4).metadata["papermill"]["parameters"]["profile"] == source.name
        absolute = re.compile(r'"/[^"]*/(runs|notebooks|book)/')  # a build machine's folder
        for path in source.rglob("*"):
            if path.is_file():
                assert not absolute.search(path.read_text()), f"{path} names an absolute path of the machine that built it"
        tree = _book_tree(tmp_path / source.name, notebooks, (source / "build_info.md").read_text(), source.name)
        index = make.jupyter_book(tree)
        _assert_clean(index.parent, forbidden=(str(ROOT), str(tree)), profile=source.name)


def test_checker_catches_what_a_reader_would_trip_on(tmp_path):
    """A page with each defect is reported, a clean one is not (the checker can fail)."""
    clean = tmp_path / "clean.html"
    clean.write_text("<html><body><article><p>All good: 3 of 4.</p></article></body></html>")
    bad = tmp_path / "bad.html"
    png = tmp_path / "wide.png"
    from PIL import Image

    Image.new("RGB", (1600, 100), "white").save(png)
    bad.write_text(f"""<html><head><script src="https://cdn.example.invalid/x.js"></script></head><body>
      <article style="width:700px"><p>Gain of {{gain:.2f}} points</p>
      <div class="cell_output"><img src="{png.name}"></div><img src="missing.png">
      <div class="output stderr"><pre>Warning: something</pre></div>
      <p>K = np.int64(2) peers</p>
      <table><thead><tr><th></th><th>ours: error %</th><th>published</th></tr></thead>
      <tbody><tr><td>a</td><td>1</td><td>2</td></tr><tr><td>b</td><td>3</td><td>4</td></tr></tbody></table>
      <div class="cell_output"><pre>label  runs  seeds
baseline  2  [0, 1]
ONE-3  2  [0, 1]</pre></div><p>/secret/build/path</p></article></body></html>""")
    report = check.check(tmp_path, forbidden=("/secret/build/path",))
    assert report["clean.html"] == []
    found = " | ".join(report["bad.html"])
    for expected in ("literal placeholder {gain:.2f}", "figure 1600 px wide", "missing image missing.png",
                     "stderr", "table printed as text", "network request", "numpy repr np.int64(",
                     "table without row labels", "contains '/secret/build/path'"):
        assert expected in found, (expected, found)
