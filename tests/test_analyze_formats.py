"""`cnndsl analyze --format table|json|csv|md|html`, `--columns`, `-o FILE`, and the
training FLOPs (forward + backward) of docs/analyze.md.

The expected figures come from outside the code under test: LeNet-5's table as the
README printed it before --columns existed, the RFC 4180 reading of Python's csv module,
Python's html.parser, and training FLOPs worked out by hand from the convention's
formulas (the check against torch's FlopCounterMode is tests/test_verify.py).
"""
from __future__ import annotations

import csv
import io
import json
from html.parser import HTMLParser

import pytest

import cnndsl
from helpers import run_main as run, run_without_torch

# LeNet-5's layer table, as the README showed `cnndsl analyze lenet5` before this change.
LENET5_TABLE = """\
lenet5
layer   written             output  params     MACs  RF
input   INPUT(1, 32, 32)   1×32×32       0        0   1
c1      CONV5-6(pad=0)     6×28×28     156  117,600   5
relu1   RELU               6×28×28       0        0   5
s2      POOL               6×14×14       0        0   6
c3      CONV5-16(pad=0)   16×10×10   2,416  240,000  14
relu2   RELU              16×10×10       0        0  14
s4      POOL                16×5×5       0        0  16
c5      CONV5-120(pad=0)   120×1×1  48,120   48,000  32
relu3   RELU               120×1×1       0        0  32
f6      FC-84                   84  10,164   10,080  32
relu4   RELU                    84       0        0  32
output  FC-10                   10     850      840  32
"""

# The keys of --json before this change: they must all still be there (added, never renamed).
OLD_TOTALS = {"params", "trainable_params", "buffers", "macs", "flops", "activation_elements",
              "unshared_params", "layers", "memory"}
OLD_ROW = {"name", "kind", "layer", "inputs", "output", "params", "buffers", "macs", "flops",
           "activations", "unshared_params", "rf", "rf_hw", "jump", "line", "col"}

# By hand: CONV3-2 (pad 1) on 1×4×4 → 2×4×4, 288 MACs, a bias (it feeds RELU);
# RELU over 32 elements; FC-3 from 32 inputs, 96 MACs, a bias.
SMALL = "INPUT(1, 4, 4) -> CONV3-2 -> RELU -> FC-3"
SMALL_TRAINING = {
    # forward 2·288 + 32; backward: weights 2·288, no input gradient (its input is INPUT), bias 32
    "conv1": (2 * 288 + 32) + (2 * 288 + 32),
    # forward 32; backward as many
    "relu1": 32 + 32,
    # forward 2·96 + 3; backward: weights 2·96, input 2·96, bias 3
    "fc1": (2 * 96 + 3) + (2 * 96 + 2 * 96 + 3),
}


def _csv_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_the_default_table_is_unchanged(capsys):
    status, out, _ = run(capsys, "analyze", "lenet5")
    assert status == 0
    assert out.startswith(LENET5_TABLE)


def test_the_default_columns_are_todays(capsys):
    _, default, _ = run(capsys, "analyze", "lenet5")
    _, chosen, _ = run(capsys, "analyze", "lenet5", "--columns", "layer,written,output,params,macs,rf")
    assert default == chosen


def test_json_is_format_json_and_keeps_its_keys(capsys):
    _, alias, _ = run(capsys, "analyze", "lenet5", "--json")
    _, formatted, _ = run(capsys, "analyze", "lenet5", "--format", "json")
    assert alias == formatted
    data = json.loads(alias)
    assert OLD_TOTALS | {"training_flops"} <= set(data["totals"])
    for row in data["layers"]:
        assert OLD_ROW | {"training_flops"} <= set(row)


def test_details_of_a_row():
    analysis = cnndsl.load("lenet5").analyze()
    c1, relu1 = analysis.layers(details=True)[1:3]
    assert (c1["input_shapes"], c1["kernel"], c1["stride"]) == ([[1, 32, 32]], [5, 5], [1, 1])
    assert (relu1["input_shapes"], relu1["kernel"], relu1["stride"]) == ([[6, 28, 28]], None, None)


def test_training_flops_by_hand(capsys):
    status, out, _ = run(capsys, "analyze", SMALL, "--json")
    data = json.loads(out)
    rows = {r["name"]: r["training_flops"] for r in data["layers"]}
    assert status == 0 and rows == {"input": 0, **SMALL_TRAINING}
    assert data["totals"]["training_flops"] == sum(SMALL_TRAINING.values()) == 1862


def test_a_layer_without_a_gradient_has_no_backward():
    # The pool reads the image and has no parameters: autograd never runs its backward; the
    # CONV after it needs no gradient of its input either.
    analysis = cnndsl.parse("INPUT(1, 4, 4) -> POOL -> CONV3-2(bias=false)").analyze()
    pool, conv = analysis.layers()[1:]
    assert pool["training_flops"] == pool["flops"] == 3 * 4   # 4 windows of 2×2: 3 each
    assert conv["training_flops"] == 2 * 2 * conv["macs"]     # forward + weight gradient


def test_csv_one_row_per_layer_rfc4180(capsys):
    status, out, _ = run(capsys, "analyze", "lenet5", "--format", "csv")
    data = json.loads(run(capsys, "analyze", "lenet5", "--json")[1])
    assert status == 0 and out.endswith("\r\n") and out.count("\r\n") == 1 + len(data["layers"])
    rows = _csv_rows(out)
    assert list(rows[0]) == ["layer", "written", "output", "params", "macs", "rf"]
    assert [r["layer"] for r in rows] == [r["name"] for r in data["layers"]]
    assert rows[0]["written"] == "INPUT(1, 32, 32)"       # quoted: it has commas
    assert [int(r["macs"]) for r in rows] == [r["macs"] for r in data["layers"]]   # no "1,234"


def test_csv_all_columns(capsys):
    from cnndsl.analysis.columns import COLUMNS

    _, out, _ = run(capsys, "analyze", "INPUT(3, 8, 8) -> CONV3-4 -> RES(CONV3-4) -> FC-2",
                    "--format", "csv", "--columns", "all")
    rows = _csv_rows(out)
    assert list(rows[0]) == list(COLUMNS)
    add = next(r for r in rows if r["kind"] == "ADD")
    assert add["inputs"] == "res1.conv1, conv1" and add["input"] == "4×8×8, 4×8×8"
    assert sum(float(r["params%"]) for r in rows) == pytest.approx(100, abs=1e-3)
    conv = rows[1]
    assert (conv["kernel"], conv["stride"], conv["trainable"]) == ("3×3", "1", "yes")


def test_depth_sums_blocks_in_every_format(capsys):
    data = json.loads(run(capsys, "analyze", "resnet18", "--input", "3,64,64", "--json")[1])
    _, out, _ = run(capsys, "analyze", "resnet18", "--input", "3,64,64", "--format", "csv",
                    "--depth", "1", "--columns", "layer,kind,params,macs,training_flops,inputs")
    rows = _csv_rows(out)
    assert [r["layer"] for r in rows][:6] == ["input", "conv1", "bn1", "relu1", "pool1", "layer1"]
    assert rows[5]["kind"] == "…" and rows[6]["inputs"] == "layer1"   # layer2 reads layer1
    for key in ("params", "macs", "training_flops"):
        assert sum(int(r[key]) for r in rows) == data["totals"][key]


def _markdown_cells(line: str) -> list[str]:
    """A GitHub table row's cells: split at the pipes that are not escaped."""
    import re

    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def test_markdown_tables(capsys, tmp_path):
    spec = tmp_path / "bar.yaml"
    spec.write_text('name: "a|b <i>"\ninput: [1, 8, 8]\nnet: CONV3-4 -> RELU -> FC-2\n')
    status, out, _ = run(capsys, "analyze", str(spec), "--format", "md", "--columns", "all")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == r"### a\|b \<i\>"
    table = [line for line in lines if line.startswith("|")]
    widths = {len(_markdown_cells(line)) for line in table[:6]}   # header, rule, 4 layers
    assert widths == {17}
    assert _markdown_cells(table[1])[:4] == [":---", ":---", ":---", "---:"]
    assert "| training FLOPs |" in out and "### totals" in out


def test_markdown_escapes_what_would_be_markup():
    from cnndsl.analysis.formats import markdown_text

    assert markdown_text("x|y") == r"x\|y"
    assert markdown_text("*a* _b_ `c` <d>") == r"\*a\* \_b\_ \`c\` \<d\>"
    assert markdown_text("two\nlines") == "two lines"


class _Page(HTMLParser):
    """Tags opened and closed, and the text of every cell."""

    def __init__(self):
        super().__init__()
        self.stack, self.cells, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in ("meta", "br"):
            self.stack.append(tag)
        if tag in ("td", "th"):
            self.cells.append("")

    def handle_endtag(self, tag):
        assert self.stack.pop() == tag

    def handle_data(self, data):
        if self.stack and self.stack[-1] in ("td", "th"):
            self.cells[-1] += data


def test_html_one_escaped_standalone_page(capsys, tmp_path):
    spec = tmp_path / "evil.yaml"
    spec.write_text('name: "<script>alert(1)</script>"\ninput: [1, 8, 8]\nnet: CONV3-4 -> FC-2\n')
    status, out, _ = run(capsys, "analyze", str(spec), "--format", "html")
    assert status == 0 and out.startswith("<!DOCTYPE html>")
    assert "<script" not in out and "&lt;script&gt;" in out
    page = _Page()
    page.feed(out)
    page.close()
    assert page.stack == [] and "script" not in page.tags and page.tags.count("table") == 2
    assert "CONV3-4" in page.cells and "training FLOPs" in page.cells


def test_unknown_column_is_one_line(capsys):
    status, out, err = run(capsys, "analyze", "lenet5", "--columns", "layer,parms")
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and "did you mean 'params'" in err and "training_flops" in err


@pytest.mark.parametrize("argv", [
    ["--json", "--format", "csv"],
    ["--json", "--columns", "macs"],
])
def test_conflicting_flags_are_usage_errors(capsys, argv):
    status, _, _ = run(capsys, "analyze", "lenet5", *argv)
    assert status == 2


def test_out_file_by_suffix_and_overwrite(capsys, tmp_path):
    out = tmp_path / "lenet5.csv"
    status, printed, _ = run(capsys, "analyze", "lenet5", "-o", str(out))
    assert status == 0 and printed == f"wrote {out}\n"
    assert _csv_rows(out.read_bytes().decode("utf-8"))[1]["layer"] == "c1"
    status, _, err = run(capsys, "analyze", "lenet5", "-o", str(out), "--format", "md")
    assert status == 2 and "--overwrite" in err and out.read_text().startswith("layer,")
    status, _, _ = run(capsys, "analyze", "lenet5", "-o", str(out), "--format", "md", "--overwrite")
    assert status == 0 and out.read_text().startswith("### lenet5")
    status, _, err = run(capsys, "analyze", "lenet5", "-o", str(tmp_path))
    assert status == 2 and "is a folder" in err
    text = tmp_path / "lenet5.txt"
    assert run(capsys, "analyze", "lenet5", "-o", str(text))[0] == 0
    assert text.read_text(encoding="utf-8").startswith(LENET5_TABLE)


def test_a_spec_with_errors_writes_nothing(capsys, tmp_path):
    out = tmp_path / "bad.md"
    status, _, err = run(capsys, "analyze", "INPUT(1, 7, 7) -> CONV3-2 -> ADD(ID, POOL)", "-o", str(out))
    assert status == 1 and "error" in err and not out.exists()


FAMILY = ["families/notes", "--set", "N=1..2", "--set", "M=2", "--set", "K=0..1", "--set", "c=16",
          "--set", "h=128"]


def test_family_csv_has_a_row_per_distinct_member(capsys):
    lines = run(capsys, "analyze", *FAMILY, "--json")[1].splitlines()
    members, summary = [json.loads(line) for line in lines[:-1]], json.loads(lines[-1])
    status, out, _ = run(capsys, "analyze", *FAMILY, "--format", "csv")
    rows = _csv_rows(out)
    assert status == 0 and len(rows) == summary["distinct"] == len(members)
    assert list(rows[0])[:6] == ["N", "M", "K", "c", "h", "pool?"]
    assert [int(r["macs"]) for r in rows] == [m["macs"] for m in members]


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_family_documents(capsys, fmt):
    status, out, _ = run(capsys, "analyze", *FAMILY, "--format", fmt)
    assert status == 0 and "Pareto" in out and "surviving:" in out


@pytest.mark.parametrize("flag", [["--columns", "macs"], ["--verify"]])
def test_family_refuses_layer_flags(capsys, flag):
    status, _, err = run(capsys, "analyze", *FAMILY, *flag)
    assert status == 2 and err.count("\n") == 1


@pytest.mark.parametrize("fmt", ["csv", "md", "html"])
def test_formats_need_no_torch(fmt):
    result = run_without_torch("analyze", "lenet5", "--format", fmt, "--columns", "all",
                               "--depth", "1")
    assert result.returncode == 0, result.stderr
    assert "c1" in result.stdout


def test_the_doc_lists_every_column():
    """docs/analyze.md's table of columns is the table in columns.py, row by row."""
    import re

    from cnndsl.analysis.columns import COLUMNS
    from helpers import ROOT

    text = (ROOT / "docs" / "analyze.md").read_text(encoding="utf-8")
    table = re.search(r"^\| column \| header \| what \|\n\|[-|]+\|\n((?:\|.*\n)+)", text, re.M)
    rows = [_markdown_cells(line) for line in table.group(1).splitlines()]
    assert rows == [[f"`{c.name}`", c.header, c.description] for c in COLUMNS.values()]


def test_help_lists_the_columns(capsys):
    with pytest.raises(SystemExit) as exit:
        run(capsys, "analyze", "--help")
    out = capsys.readouterr().out
    assert exit.value.code == 0 and "params%: the share of all the parameters;" in " ".join(out.split())


def test_a_wide_table_is_never_cropped_in_a_pipe(capsys, tmp_path):
    """--columns all on ResNet-50 is wider than 200 characters: a pipe or a file still gets
    whole lines (the terminal's layout would shrink the columns with …)."""
    status, out, _ = run(capsys, "analyze", "resnet50", "--input", "3,64,64", "--columns", "all")
    header = out.splitlines()[1]
    assert status == 0 and len(header) > 200 and header.endswith("connected to")
    assert "…" not in out
    assert "layer4.neck2.res1.conv3       CONV1-2048" in out   # the longest name, whole
