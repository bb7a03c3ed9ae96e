"""`cnndsl report`: the HTML page of an analysis or a run folder.

Without a browser: the page's structure (one row per layer, block rows, totals, the
diagram or a note without Graphviz), escaping of hostile text, the SVG cleaning, a run
folder's curves and summary (damaged files skipped with a note, a hostile checkpoint
refused unread), the output file's checks and atomic write, and no torch.

In headless Chromium (Selenium, the system's chromium and chromedriver): no console
error, no network request, one row per layer, sorting, folding blocks, --depth.
Without selenium, chromium or chromedriver those tests skip, saying what is missing.
"""
from __future__ import annotations

import base64
import hashlib
import html
import importlib.util
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cnndsl.backends import html_report
from cnndsl.cli import main
from cnndsl.errors import CnnDslError
from cnndsl.lang.spec import resolve
from cnndsl.training import checkpoint

from helpers import ROOT, run_without_torch

SMALL = "INPUT(3, 16, 16) -> CONV3-8 -> CONCAT(CONV1-4, RES(CONV3-8)) -> POOL -> FC-10"


def report(tmp_path, spec: str, *flags: str, name: str = "report.html") -> tuple[int, Path]:
    out = tmp_path / name
    return main(["report", spec, "-o", str(out), *flags]), out


class Page(HTMLParser):
    """What the tests read of a report: the table's rows, every start tag, the texts."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.rows: list[dict] = []      # {"class", "block", "cells"} of the layer table
        self.tags: list[tuple[str, dict]] = []
        self._in_table = self._cell = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table" and attrs.get("id") == "layer-table":
            self._in_table = True
        elif self._in_table and tag == "tr" and attrs.get("class", "").split()[:1] in (["layer"], ["block"]):
            self.rows.append({"class": attrs["class"].split(), "block": attrs.get("data-block"), "cells": []})
        elif self._in_table and tag == "td" and self.rows:
            self.rows[-1]["cells"].append("")
            self._cell = True

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        if tag == "td":
            self._cell = False

    def handle_data(self, data):
        if self._cell:
            self.rows[-1]["cells"][-1] += data

    def layers(self) -> list[list[str]]:
        return [r["cells"] for r in self.rows if "layer" in r["class"]]

    def blocks(self) -> dict[str, dict]:
        return {r["block"]: r for r in self.rows if "block" in r["class"]}


def has_graphviz() -> bool:
    return importlib.util.find_spec("graphviz") is not None and shutil.which("dot") is not None


# --- the page ---------------------------------------------------------------------------


def test_a_row_per_layer_a_row_per_block_and_the_totals(tmp_path, capsys):
    status, out = report(tmp_path, SMALL)
    assert status == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: inline, 7 layers, ")
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    analysis = resolve(SMALL).analyze()
    layers = analysis.layers()
    assert [cells[0] for cells in page.layers()] == [row["name"] for row in layers]
    conv1 = page.layers()[1]
    # layer, written, output, params, MACs, FLOPs, training FLOPs, activations, RF, inputs;
    # training FLOPs: forward + the weights' gradient (2 per MAC) + the bias's (1 per output),
    # no input gradient after INPUT (docs/analyze.md, "Training FLOPs")
    assert conv1 == ["conv1", "CONV3-8", "8×16×16", "224", "55,296", "112,640",
                     f"{112_640 + 2 * 55_296 + 2_048:,}", "2,048", "3", "input"]
    # Blocks: concat1 (its branches), concat1.b1, concat1.b2, concat1.b2.res1; each row
    # comes before its first layer and sums its descendants (not the join concat1 itself).
    blocks = page.blocks()
    assert set(blocks) == {"concat1", "concat1.b1", "concat1.b2", "concat1.b2.res1"}
    names = [r["block"] or r["cells"][0] for r in page.rows]
    assert names.index("concat1") < names.index("concat1.b1") < names.index("concat1.b1.conv1")
    descendants = [r for r in layers if r["name"].startswith("concat1.")]
    assert blocks["concat1"]["cells"][1] == f"{len(descendants)} layers"
    assert blocks["concat1"]["cells"][3] == f"{sum(r['params'] for r in descendants):,}"
    # The totals as `cnndsl analyze` prints them, the conventions, the spec's text.
    totals = analysis.totals()
    assert f"{totals['params']:,}" in text and f"{totals['macs']:,}" in text
    assert "params (trainable)" in text and "training memory (est.)" in text
    assert "A MAC is one multiply-add" in text and "FLOPs are 2 per MAC" in text
    assert "Receptive field per layer" in text and "Params per stage" in text and "MACs per stage" in text
    assert "Diagnostics (none)" in text


def test_the_diagram_is_graphviz_svg_inlined_without_prolog(tmp_path):
    if not has_graphviz():
        pytest.skip("SKIPPED LOUDLY: the graphviz package or Graphviz's `dot` is missing "
                    "(pip install 'cnndsl[viz]'; apt-get install graphviz): the diagram test did not run")
    status, out = report(tmp_path, SMALL)
    text = out.read_text(encoding="utf-8")
    assert status == 0 and "<?xml" not in text and "<!DOCTYPE svg" not in text
    svg = text[text.index('<div class="diagram" id="diagram-box"><svg'):]
    assert ">conv1</text>" in svg and ">12×16×16</text>" in svg    # a box and an edge's shape


@pytest.mark.parametrize("missing", ["package", "program"])
def test_without_graphviz_the_report_is_written_with_a_note(tmp_path, monkeypatch, capsys, missing):
    if missing == "package":
        monkeypatch.setitem(sys.modules, "graphviz", None)   # `import graphviz` now fails
        expected = "pip install 'cnndsl[viz]'"
    else:
        pytest.importorskip("graphviz", reason="the graphviz package is not installed")
        monkeypatch.setenv("PATH", str(tmp_path))            # no `dot` on it
        expected = "apt-get install graphviz"
    status, out = report(tmp_path, SMALL)
    assert status == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("the report has no diagram: ") and expected in printed[1]
    text = out.read_text(encoding="utf-8")
    assert '<p class="note">the report has no diagram: ' in text and "<svg" in text   # the charts
    assert len(Page(text).layers()) == 8   # the input and 7 layers


def test_depth_folds_the_blocks_that_deep(tmp_path):
    status, out = report(tmp_path, "resnet18", "--depth", "2")
    assert status == 0
    blocks = Page(out.read_text(encoding="utf-8")).blocks()
    folded = {name for name, row in blocks.items() if "closed" in row["class"]}
    assert folded == {name for name in blocks if name.count(".") >= 1}
    assert "layer1" in blocks and "layer1.basic1" in folded


def test_a_network_with_an_error_is_reported_with_its_diagnostic(tmp_path, capsys):
    status, out = report(tmp_path, "INPUT(3, 7, 7) -> CONV3-8/3(pad=0) -> RELU", "--strict")
    assert status == 1
    err = capsys.readouterr().err
    assert err.startswith("<inline>:1:19: error: CONV3-8/3(pad=0) does not fit its 7×7 input")
    text = out.read_text(encoding="utf-8")
    first = err.split("\n")[:3]    # file:line:col, the source line, the caret: as printed
    assert '<pre class="error">' + "\n".join(first) in html.unescape(text)
    rows = Page(text).rows
    assert "error" in rows[1]["class"]    # conv1's row is marked


@pytest.mark.parametrize("argv, message", [
    (["families/notes"], "this spec is a family of 1,008 networks"),
    (["INPUT(3, 8, 8) -> CONVV3-4"], "unknown layer 'CONVV3'"),
    (["no_such_spec.yaml"], "no such spec file"),
])
def test_bad_specs_are_one_diagnostic_and_no_file(tmp_path, capsys, argv, message):
    status, out = report(tmp_path, *argv)
    err = capsys.readouterr().err
    assert status in (1, 2) and message in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


# --- escaping ---------------------------------------------------------------------------

HOSTILE_YAML = """\
name: "</title><script>alert(1)</script>"
input: [3, 8, 8]
net: |
  CONV3-4/3(pad=0) -> RELU   # </pre><img src=x onerror=alert(2)><script>alert(3)</script>
"""
SAFE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "nav", "a", "section",
             "p", "table", "thead", "tbody", "tr", "th", "td", "button", "span", "details",
             "summary", "pre", "div", "script", "svg", "g", "path", "polygon", "polyline",
             "ellipse", "text", "line", "rect", "circle"}


def hostile_report(tmp_path) -> Path:
    spec = tmp_path / "x<svg onload=alert(4)>.yaml"     # a hostile file name too
    spec.write_text(HOSTILE_YAML, encoding="utf-8")
    status, out = report(tmp_path, str(spec))
    assert status == 0
    return out


def test_hostile_names_and_text_are_escaped(tmp_path):
    text = hostile_report(tmp_path).read_text(encoding="utf-8")
    page = Page(text)
    assert text.count("<script") == 1                        # the page's own, at the end
    assert {tag for tag, _ in page.tags} <= SAFE_TAGS        # no <img>, no injected tag
    assert not [name for _, attrs in page.tags for name in attrs if name.startswith("on")]
    assert "<title>cnndsl report: &lt;/title&gt;&lt;script&gt;alert(1)&lt;/script&gt;</title>" in text
    # The diagnostic's source line, with its comment, as text in the <pre>:
    assert "# &lt;/pre&gt;&lt;img src=x onerror=alert(2)&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in text
    assert "x&lt;svg onload=alert(4)&gt;.yaml" in text


def test_the_page_allows_only_its_own_style_and_script():
    """The Content-Security-Policy: nothing may load, and only the template's style and
    script (by their sha256) may run."""
    analysis = resolve(SMALL).analyze()
    page, _ = html_report.report_html(analysis)
    csp = page.split('http-equiv="Content-Security-Policy" content="')[1].split('"')[0]
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    for tag in ("style", "script"):
        body = page.split(f"<{tag}>")[1].split(f"</{tag}>")[0]
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in csp


@pytest.mark.parametrize("svg, kept, dropped", [
    ('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script><g><text x="1">a</text></g></svg>',
     '<text x="1">a</text>', "script"),
    ('<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><path d="M1,2"/></svg>',
     '<path d="M1,2"></path>', "onload"),
    ('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">'
     '<a xlink:href="javascript:alert(1)"><text x="1">a</text></a><polygon points="1,2"/></svg>',
     '<polygon points="1,2"></polygon>', "javascript"),
    ('<svg xmlns="http://www.w3.org/2000/svg"><path fill="url(http://evil/x)" d="M1,2"/></svg>',
     '<path d="M1,2"></path>', "evil"),
    ('<svg xmlns="http://www.w3.org/2000/svg"><foreignObject><div>x</div></foreignObject>'
     '<ellipse rx="1.46"/></svg>', '<ellipse rx="1"></ellipse>', "foreignObject"),
    ('<svg xmlns="http://www.w3.org/2000/svg"><text x="1">&lt;/svg&gt;&lt;script&gt;</text></svg>',
     '<text x="1">&lt;/svg&gt;&lt;script&gt;</text>', "<script"),
])
def test_clean_svg_keeps_drawing_and_drops_the_rest(svg, kept, dropped):
    cleaned = html_report.clean_svg(svg)
    assert kept in cleaned and dropped not in cleaned


def test_clean_svg_never_expands_an_entity():
    # The prolog, DOCTYPE and its entities are cut: the reference is then undefined.
    bomb = ('<!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            '<svg xmlns="http://www.w3.org/2000/svg"><text>&b;</text></svg>')
    with pytest.raises(CnnDslError, match="could not be read"):
        html_report.clean_svg(bomb)
    with pytest.raises(CnnDslError, match="declaration"):
        html_report.clean_svg('<svg xmlns="http://www.w3.org/2000/svg"><!DOCTYPE x><text/></svg>')


# --- the output file --------------------------------------------------------------------


def test_out_must_be_a_new_html_file_in_an_existing_folder(tmp_path, capsys):
    (tmp_path / "folder.html").mkdir()
    cases = [("folder.html", "is a folder"), ("missing/report.html", "does not exist"),
             ("report.svg", "give one of .html, .htm")]
    for name, message in cases:
        assert report(tmp_path, SMALL, name=name)[0] == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    (tmp_path / "old.html").write_text("mine")
    assert report(tmp_path, SMALL, name="old.html")[0] == 2
    assert "add --overwrite" in capsys.readouterr().err
    assert (tmp_path / "old.html").read_text() == "mine"
    assert report(tmp_path, SMALL, "--overwrite", name="old.html")[0] == 0


def test_an_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)   # atomic_write fsyncs before its rename
    status, out = report(tmp_path, SMALL)
    assert status == 130 and list(tmp_path.iterdir()) == []


# --- a run folder -----------------------------------------------------------------------

LENET_LIKE = "INPUT(1, 16, 16) -> CONV5-6 -> RELU -> POOL -> FC-10"


def fake_checkpoint(state: dict) -> bytes:
    """A zip laid out as torch.save's, its data.pkl a plain pickle (no torch needed)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(state, protocol=2))
        z.writestr("archive/version", "3\n")
    return buffer.getvalue()


def run_state(text: str = LENET_LIKE, **changes) -> dict:
    spec = {"text": text, "digest": hashlib.sha256(text.encode()).hexdigest(), "name": "tiny",
            "suffix": "", "path": "<inline>"}
    state = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "spec": spec,
             "input_shape": [1, 16, 16], "config": {"epochs": 3, "batch_size": 32, "optimizer": "adam"},
             "epoch": 3, "best": {"metric": "val_acc", "value": 0.5, "loss": 1.0, "epoch": 3},
             "elapsed": {"seconds": 1.5}}
    state.update(changes)
    return state


SUMMARY = {"test_acc": 0.75, "epochs": 3, "device": "cpu", "seconds": 1.5}


def fake_run(folder: Path, state: dict | None = None, metrics: list[str] | None = None,
             summary: dict | None = SUMMARY) -> Path:
    """A run folder as `cnndsl train` leaves it (summary None: before the run ended)."""
    folder.mkdir()
    (folder / "last.pt").write_bytes(fake_checkpoint(state or run_state()))
    records = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.3 * e, "val_loss": 2.2 / e,
                "val_acc": 0.25 * e} for e in (1, 2, 3)]
    lines = metrics if metrics is not None else [json.dumps(r) for r in records]
    (folder / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_a_run_report_has_its_curves_summary_and_settings(tmp_path):
    status, out = report(tmp_path, str(fake_run(tmp_path / "run")))
    assert status == 0
    text = out.read_text(encoding="utf-8")
    assert "Loss per epoch" in text and "Accuracy per epoch" in text
    loss = text[text.index("Loss per epoch"):text.index("Accuracy per epoch")]
    assert loss.count("<polyline") == 2 and loss.count("<circle") == 6   # train and val, 3 epochs
    assert "<td>test_acc</td><td class=\"num\">0.75</td>" in text
    assert "<td>batch_size</td><td class=\"num\">32</td>" in text      # the run's settings
    # The memory figures at the run's batch and optimiser:
    assert "activations / batch of 32" in text and "adam state" in text


def test_damaged_metrics_lines_are_skipped_with_a_note(tmp_path, capsys):
    good = [json.dumps({"epoch": e, "train_loss": 1.0 / e, "val_loss": None}) for e in (1, 2, 3)]
    bad = ['{"epoch": 4, "train_lo', "[1, 2]", '{"epoch": "5"}', '{"epoch": 0}', "\x00\xff garbage",
           "[" * 100_000, '{"epoch": 6, "train_loss": "' + "x" * 100_000 + '"}']
    lines = [good[0], bad[0], good[1], *bad[1:-1], good[2], bad[-1], '{"epoch": 7, "train_loss": NaN}']
    folder = fake_run(tmp_path / "run", metrics=lines, summary=None)
    status, out = report(tmp_path, str(folder))
    assert status == 0
    printed = capsys.readouterr().out
    # Epoch 6's train_loss is text: a record, with nothing to draw. The rest: 6 skipped.
    assert f"{folder / 'metrics.jsonl'}: skipped 6 lines that are not an epoch record" in printed
    text = out.read_text(encoding="utf-8")
    assert "skipped 6 lines" in text and "no summary.json" in text
    loss = text[text.index("Loss per epoch"):text.index("Accuracy per epoch")]
    assert loss.count("<circle") == 3    # train loss at epochs 1, 2, 3; epoch 7's NaN is no value


def test_a_hostile_checkpoint_is_refused_unread(tmp_path, capsys):
    marker = tmp_path / "ran"
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."   # os.system(...)
    folder = fake_run(tmp_path / "run")
    with zipfile.ZipFile(folder / "last.pt", "w") as z:
        z.writestr("archive/data.pkl", payload)
    status, out = report(tmp_path, str(folder))
    err = capsys.readouterr().err
    assert status == 2 and "it names os.system, which is not plain data" in err
    assert len(err.strip().splitlines()) == 1 and not marker.exists() and not out.exists()


@pytest.mark.parametrize("state, message", [
    (run_state(spec={"text": "x"}), "its spec record is incomplete"),
    (run_state(version=99), "not a checkpoint version 1"),
    ({"weights": [1, 2]}, "not a cnndsl checkpoint"),
    (dict(run_state(), spec=dict(run_state()["spec"], text="INPUT(1, 8, 8) -> FC-2")),
     "the spec text does not match its sha256"),
    (run_state(input_shape=[1, 16]), "input_shape is not three whole numbers"),
])
def test_a_damaged_checkpoint_is_one_line(tmp_path, capsys, state, message):
    status, _ = report(tmp_path, str(fake_run(tmp_path / "run", state)))
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_folder_without_a_checkpoint_or_with_input_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report(tmp_path, str(tmp_path / "empty"))[0] == 2
    assert "no last.pt or best.pt" in capsys.readouterr().err
    folder = fake_run(tmp_path / "run")
    assert report(tmp_path, str(folder), "--input", "3,32,32")[0] == 2
    assert "--input: a run folder's network is the one it trained" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real `cnndsl train` run folder: torch's own checkpoint format."""
    pytest.importorskip("torch", reason="torch is not installed: no run to report on")
    pytest.importorskip("sklearn", reason="scikit-learn is not installed: no digits to train on")
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "lenet5", "--epochs", "2", "--limit", "200", "--out", str(out)]) == 0
    return out


@pytest.mark.slow   # a real `cnndsl train` run (once for the module)
def test_a_trained_run_is_read_from_its_checkpoint(trained_run, tmp_path):
    status, out = report(tmp_path, str(trained_run))
    assert status == 0
    text = out.read_text(encoding="utf-8")
    assert "<title>cnndsl report: lenet5</title>" in text
    assert len(Page(text).layers()) == len(resolve("lenet5").analyze().layers())
    assert text.count("<circle") >= 8     # 2 epochs × (train, val) × (loss, accuracy)
    summary = json.loads((trained_run / "summary.json").read_text())
    assert f"<td>test_acc</td><td class=\"num\">{summary['test_acc']:.6g}</td>" in text


# --- no torch ---------------------------------------------------------------------------

def without_torch(*argv: str) -> subprocess.CompletedProcess:
    return run_without_torch(*argv, cwd=ROOT)


def test_report_of_a_spec_does_not_import_torch(tmp_path):
    result = without_torch("report", "resnet18", "-o", str(tmp_path / "r.html"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r.html").stat().st_size > 10_000


@pytest.mark.slow   # a real `cnndsl train` run (once for the module)
def test_report_of_a_trained_run_does_not_import_torch(trained_run, tmp_path):
    result = without_torch("report", str(trained_run), "-o", str(tmp_path / "r.html"))
    assert result.returncode == 0, result.stderr
    assert "Loss per epoch" in (tmp_path / "r.html").read_text(encoding="utf-8")


# --- in a browser -----------------------------------------------------------------------

BROWSER_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--window-size=1400,1000")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Selenium, with the system's chromium and chromedriver
    (given by path, so Selenium Manager never runs: it would try to download them)."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("SKIPPED LOUDLY: selenium is not installed (pip install selenium): "
                    "the report's browser tests did not run")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    for program, path, package in (("chromium", chromium, "chromium"),
                                   ("chromedriver", driver_path, "chromium-driver")):
        if path is None:
            pytest.skip(f"SKIPPED LOUDLY: no {program} on PATH (apt-get install {package}): "
                        "the report's browser tests did not run")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SE_OFFLINE", "true")     # and should Selenium Manager run after all: no downloads
        try:
            driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        except WebDriverException as e:
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            pytest.skip(f"SKIPPED LOUDLY: chromium did not start ({why}): "
                        "the report's browser tests did not run")
    driver.execute_cdp_cmd("Network.enable", {})
    yield driver
    driver.quit()


def open_report(driver, path: Path) -> None:
    """Load the page; fail on any SEVERE console entry and on any request but the page."""
    driver.get(path.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources == []
    requests = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    urls = {m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"}
    assert urls <= {path.as_uri()}, urls


VISIBLE = """return Array.from(document.querySelectorAll('#layer-table tbody tr'))
    .filter(r => !r.hidden)
    .map(r => [r.classList.contains('block') ? 'block' : 'layer',
               r.getAttribute('data-block') || r.cells[0].textContent,
               r.cells[arguments[0]].textContent]);"""
PARAMS = [header for header, _, _ in html_report.COLUMNS].index("params")


def visible(driver, column: int = PARAMS) -> list[list[str]]:
    return driver.execute_script(VISIBLE, column)


def click_header(driver, header: str) -> None:
    driver.find_element("xpath", f"//table[@id='layer-table']//th[text()='{header}']").click()


def click_toggle(driver, block: str) -> None:
    driver.find_element("css selector", f'tr.block[data-block="{block}"] button.toggle').click()


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pages")
    out = {}
    for spec, flags in (("resnet18", ()), ("googlenet", ()), ("resnet18", ("--depth", "1"))):
        name = f"{spec}{'_'.join(('',) + flags)}.html"
        assert main(["report", spec, "-o", str(folder / name), *flags]) == 0
        out[" ".join((spec,) + flags)] = folder / name
    return out


@pytest.mark.parametrize("spec", ["resnet18", "googlenet"])
def test_browser_a_row_per_layer_the_diagram_and_no_request(browser, pages, spec):
    open_report(browser, pages[spec])
    layers = [row["name"] for row in resolve(spec).analyze().layers()]
    assert [name for kind, name, _ in visible(browser) if kind == "layer"] == layers
    if has_graphviz():
        texts = browser.execute_script("return document.querySelectorAll('#diagram-box svg text').length")
        assert texts > len(layers)     # a name, what was written, shapes on the edges
        width = "return document.querySelector('#diagram-box svg').getBoundingClientRect().width"
        box = browser.execute_script("return document.getElementById('diagram-box').clientWidth")
        browser.find_element("id", "fit-diagram").click()
        assert abs(browser.execute_script(width) - box) <= 1    # the box's width, whatever the SVG's
        assert browser.find_element("id", "fit-diagram").text == "actual size"
    assert browser.execute_script("return document.querySelectorAll('svg.chart').length") == 3


def test_browser_sorting_by_a_numeric_column(browser, pages):
    open_report(browser, pages["resnet18"])
    tree = visible(browser)
    click_header(browser, "params")
    ascending = visible(browser)
    values = [int(params.replace(",", "")) for _, _, params in ascending]
    assert [kind for kind, _, _ in ascending] == ["layer"] * len(values)   # flat: no block rows
    assert values == sorted(values) and len(values) == len(resolve("resnet18").analyze().layers())
    click_header(browser, "params")
    descending = [int(params.replace(",", "")) for _, _, params in visible(browser)]
    assert descending == sorted(values, reverse=True)
    assert browser.find_element("xpath", "//th[text()='params']").get_attribute("aria-sort") == "descending"
    click_header(browser, "params")   # a third time: the network's order, blocks back
    assert visible(browser) == tree


def test_browser_folding_a_block_hides_exactly_its_descendants(browser, pages):
    open_report(browser, pages["googlenet"])
    everything = visible(browser)

    def without_descendants(block: str, rows: list) -> list:
        return [row for row in rows if not row[1].startswith(block + ".")]

    block, inner = "inception3a.concat1", "inception3a.concat1.b2"
    click_toggle(browser, block)
    folded = visible(browser)
    assert folded == without_descendants(block, everything) and len(folded) < len(everything)
    assert ["layer", block] in [row[:2] for row in folded]   # the join itself stays
    assert browser.find_element("css selector", f'tr.block[data-block="{block}"] button.toggle'
                                ).get_attribute("aria-expanded") == "false"
    click_toggle(browser, block)
    assert visible(browser) == everything
    # Folded blocks inside a folded block stay folded when it unfolds.
    click_toggle(browser, inner)
    assert visible(browser) == without_descendants(inner, everything)
    click_toggle(browser, block)
    click_toggle(browser, block)
    assert visible(browser) == without_descendants(inner, everything)
    click_toggle(browser, inner)
    assert visible(browser) == everything


def test_browser_depth_starts_folded_and_expands_one_level(browser, pages):
    open_report(browser, pages["resnet18 --depth 1"])
    shown = visible(browser)
    assert all("." not in name for _, name, _ in shown)
    assert ["block", "layer2"] in [row[:2] for row in shown]
    click_toggle(browser, "layer2")
    names = [name for _, name, _ in visible(browser)]
    assert "layer2.down1" in names and "layer2.down1.add1.b1.conv1" not in names


def test_browser_hostile_spec_runs_no_script_of_its_own(browser, tmp_path):
    out = hostile_report(tmp_path)
    open_report(browser, out)
    assert browser.title == "cnndsl report: </title><script>alert(1)</script>"
    assert browser.execute_script("return document.querySelectorAll('script').length") == 1
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0


def test_the_pages_counting_conventions_say_what_the_analysis_counts():
    """The per-element FLOPs the page states for each kind ("2 for RELU6, …") are what
    cnndsl counts (cnndsl/layers.py), checked kind by kind on a 4×6×6 input."""
    import re

    text = html_report.CONVENTIONS
    # "N for KIND, KIND and KIND" (not "size + 4 for LRN": that one depends on an option)
    clauses = re.findall(r"(?<!\+ )\b(\d+) for ((?:[A-Z0-9/]+(?:, | and )?)+)", text)
    assert len(clauses) >= 6, clauses
    checked = 0
    for per_element, kinds in clauses:
        for kind in re.split(r", | and ", kinds):
            written = kind.split("/")[0]
            analysis = resolve(f"INPUT(4, 6, 6) -> {written}").analyze()
            row = analysis.layers()[1]
            assert row["flops"] == int(per_element) * 4 * 6 * 6, (kind, row["flops"])
            checked += 1
    assert checked >= 14
