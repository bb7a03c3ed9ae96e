"""`cnndsl draw`: the picture's structure (a box per layer, an edge per graph edge with
its shape), `--depth` blocks, misfits in red, escaping, Mermaid, rendering by Graphviz,
its one-line messages when Graphviz is missing, and no torch."""
from __future__ import annotations

import html
import re
import shutil
import sys
import xml.etree.ElementTree as ET

import pytest

from cnndsl.backends import draw
from cnndsl.cli import main
from cnndsl.lang.family import parse_set
from cnndsl.lang.spec import resolve

from helpers import run_without_torch

# A residual branch inside a concatenation. Shapes by the notes' formula, by hand:
# CONV3-8 (pad 1) keeps 16×16; CONCAT stacks 4 + 8 = 12 channels; POOL (2/2) halves.
SMALL = "INPUT(3, 16, 16) -> CONV3-8 -> CONCAT(CONV1-4, RES(CONV3-8)) -> POOL -> FC-10"
SMALL_EDGES = {
    ("input", "conv1", "3×16×16"),
    ("conv1", "concat1.b1.conv1", "8×16×16"),
    ("conv1", "concat1.b2.res1.conv1", "8×16×16"),
    ("concat1.b2.res1.conv1", "concat1.b2.res1", "8×16×16"),
    ("conv1", "concat1.b2.res1", "8×16×16"),      # the skip connection into the join
    ("concat1.b1.conv1", "concat1", "4×16×16"),
    ("concat1.b2.res1", "concat1", "8×16×16"),
    ("concat1", "pool1", "12×16×16"),
    ("pool1", "fc1", "12×8×8"),
}

NODE = re.compile(r"^\s*(n\d+) \[label=<(.*)>(?:, (.*))?\];$")
EDGE = re.compile(r'^\s*(n\d+) -> (n\d+) \[label="(.*)"\];$')
CELL = re.compile(r"<TD>(?:<[^>]*>)*(.*?)(?:</[^>]*>)*</TD>")


def parse_dot(text: str) -> tuple[dict, list]:
    """{node id: (label lines, attributes)} and [(from, to, label)] of to_dot's output."""
    nodes, edges = {}, []
    for line in text.splitlines():
        if m := NODE.match(line):
            nodes[m.group(1)] = ([html.unescape(c) for c in CELL.findall(m.group(2))], m.group(3) or "")
        elif m := EDGE.match(line):
            edges.append(m.groups())
    return nodes, edges


def draw_file(tmp_path, spec: str, suffix: str, *flags: str):
    out = tmp_path / f"net{suffix}"
    status = main(["draw", spec, "-o", str(out), *flags])
    return status, out


def test_dot_has_a_box_per_layer_and_an_edge_per_graph_edge(tmp_path):
    status, out = draw_file(tmp_path, SMALL, ".dot")
    assert status == 0
    text = out.read_text()
    assert "rankdir=TB" in text
    nodes, edges = parse_dot(text)
    name_of = {node: lines[0] for node, (lines, _) in nodes.items()}
    graph = resolve(SMALL).analyze().graph
    assert sorted(name_of.values()) == sorted(graph)
    assert len(edges) == graph.number_of_edges()
    assert {(name_of[a], name_of[b], shape) for a, b, shape in edges} == SMALL_EDGES
    # Joins are ovals; conv1's box says what was written and its costs
    # (CONV3-8 on 3 channels: 3·9·8 + 8 = 224 params, 216 · 16·16 = 55,296 MACs).
    assert "shape=oval" in nodes[_id(name_of, "concat1")][1]
    assert nodes[_id(name_of, "conv1")][0] == ["conv1", "CONV3-8", "params 224 · MACs 55,296"]
    assert "subgraph cluster_" in text   # the concat1 and res1 blocks are framed


def _id(name_of: dict, name: str) -> str:
    return next(node for node, n in name_of.items() if n == name)


def test_depth_one_on_resnet50_draws_a_box_per_stage_summing_the_params(tmp_path):
    status, out = draw_file(tmp_path, "specs/resnet50.yaml", ".dot", "--depth", "1")
    nodes, edges = parse_dot(out.read_text())
    boxes = {lines[0]: lines for lines, _ in nodes.values()}
    assert sorted(boxes) == sorted(["input", "conv1", "bn1", "relu1", "pool1", "layer1", "layer2",
                                    "layer3", "layer4", "gap1", "fc1"])
    # Table 1's stages: 3, 4, 6 and 3 bottlenecks of 10 layers (3 × CONV, BN; 2 RELU;
    # the join and the RELU after it), 12 for the first of each (its CONV1, BN shortcut).
    assert [boxes[f"layer{i}"][1] for i in range(1, 5)] == [
        f"{10 * n + 2} layers" for n in (3, 4, 6, 3)]
    params = sum(int(m.group(1).replace(",", "")) for lines, _ in nodes.values() for line in lines
                 if (m := re.match(r"params ([\d,]+)", line)))
    assert params == 25_557_032   # torchvision.models.resnet50's parameter count
    stage_edges = {(nodes[a][0][0], nodes[b][0][0], s) for a, b, s in edges}
    assert ("layer1", "layer2", "256×56×56") in stage_edges   # the block's output on its out-edge
    assert ("layer4", "gap1", "2048×7×7") in stage_edges
    assert len(edges) == len(nodes) - 1          # a chain of blocks at this depth
    assert status == 0


def test_depth_two_frames_each_stage_as_a_cluster(tmp_path):
    _, out = draw_file(tmp_path, "specs/resnet50.yaml", ".dot", "--depth", "2")
    labels = re.findall(r"subgraph cluster_\d+ \{\n\s*label=<([^>]*)>", out.read_text())
    assert labels == ["layer1", "layer2", "layer3", "layer4"]


def test_a_misfit_copy_is_red_with_its_message_and_its_fitting_twin_is_not(tmp_path):
    # 7 → (7 - 3 + 2)/2 + 1 = 4 fits; 4 → (4 - 3 + 2)/2 + 1 = 2.5 does not.
    spec = "INPUT(3, 7, 7) -> [CONV3-4/2]*2 -> FC-10"
    (message,) = [d.message for d in resolve(spec).analyze().diagnostics]
    assert "does not fit its 4×4 input" in message
    for flags, severity, status in (((), "warning", 0), (("--strict",), "error", 1)):
        # A warning is pale red, an error (--strict) strong red; the picture is drawn both times.
        assert draw_file(tmp_path, spec, ".dot", "--overwrite", *flags)[0] == status
        nodes, _ = parse_dot((tmp_path / "net.dot").read_text())
        by_name = {lines[0]: (lines, attrs) for lines, attrs in nodes.values()}
        lines, attrs = by_name["conv2"]
        assert f'fillcolor="{draw.FILLS[severity]}"' in attrs
        assert " ".join(lines[3:]) == message
        assert "fillcolor" not in by_name["conv1"][1] + by_name["fc1"][1]
    assert by_name["fc1"][0][-1] == "output 10"   # the network's output shape
    _, mmd = draw_file(tmp_path, spec, ".mmd", "--strict")
    assert re.search(r"^  class n2 error$", mmd.read_text(), re.M)


def test_a_block_lists_its_first_diagnostics_and_counts_the_rest(tmp_path):
    # (n - 1)/2 + 1 for four CONV1/2: 8 → 4.5, 4 → 2.5, 2 → 1.5 do not fit; 1 → 1 does.
    spec = "INPUT(3, 8, 8) -> b: CONV1-4/2*4"
    _, out = draw_file(tmp_path, spec, ".dot", "--depth", "1")
    nodes, _ = parse_dot(out.read_text())
    (lines,) = [lines for lines, _ in nodes.values() if lines[0] == "b"]
    assert lines[-1] == "… and 1 more (`cnndsl analyze` lists them)"
    assert len(resolve(spec).analyze().diagnostics) == 3


HOSTILE = 'a"<b>{c}|d&e #x\\N\nf'


def test_hostile_text_is_escaped_in_dot_and_mermaid(tmp_path, capsys):
    spec = tmp_path / "hostile.yaml"
    spec.write_text('name: "a\\"<b>{c}|d&e #x\\\\N\\nf"\ninput: [3, 8, 8]\nnet: CONV3-4\n')
    assert resolve(str(spec)).name == HOSTILE
    _, dot = draw_file(tmp_path, str(spec), ".dot")
    text = dot.read_text()
    assert "label=<a&quot;&lt;b&gt;{c}|d&amp;e #x\\N<BR/>f>" in text
    # The line that says what was written keeps to one line: the newline is shown as \n.
    said = capsys.readouterr().out
    assert said.count("\n") == 1 and 'a"<b>{c}|d&e #x\\N\\nf' in said, said
    assert "<b>" not in text and '"<' not in text
    # The escapes themselves, on the worst characters of each format.
    assert draw.html_text(HOSTILE) == "a&quot;&lt;b&gt;{c}|d&amp;e #x\\N<BR/>f"
    assert draw.dot_string(HOSTILE) == '"a\\"<b>{c}|d&e #x\\\\N\\nf"'
    assert draw.mermaid_text(HOSTILE) == "a#34;#60;b#62;#123;c#125;#124;d#38;e #35;x\\N<br>f"
    assert draw.html_text("a\x00b") == "a\ufffdb"


def test_hostile_dot_renders(tmp_path):
    """What the escaping is for: dot reads the file and draws the text as written."""
    need_graphviz()
    spec = tmp_path / "hostile.yaml"
    spec.write_text('name: "a\\"<b>{c}|d&e"\ninput: [3, 8, 8]\nnet: CONV3-4\n')
    status, svg = draw_file(tmp_path, str(spec), ".svg")
    texts = [t.text for t in ET.parse(svg).iter() if t.tag.endswith("text")]
    assert status == 0 and 'a"<b>{c}|d&e' in texts


def test_mermaid_flowchart_has_a_node_per_layer(tmp_path):
    status, out = draw_file(tmp_path, SMALL, ".mmd")
    text = out.read_text()
    assert status == 0 and text.startswith("flowchart TB\n")
    names = re.findall(r'^\s*n\d+\(?\["<b>([^<]*)</b>', text, re.M)
    assert sorted(names) == sorted(resolve(SMALL).analyze().graph)
    assert len(re.findall(r"-->\|", text)) == len(SMALL_EDGES)


def need_graphviz():
    pytest.importorskip("graphviz", reason="the graphviz package is not installed: "
                                           "pip install 'cnndsl[viz]'")
    if shutil.which("dot") is None:
        pytest.skip("SKIPPED LOUDLY: Graphviz's `dot` program is not installed "
                    "(apt-get install graphviz): the .svg tests did not run")


def test_svg_from_dot_is_xml_naming_every_layer(tmp_path):
    need_graphviz()
    status, out = draw_file(tmp_path, SMALL, ".svg")
    assert status == 0
    texts = {t.text for t in ET.parse(out).iter() if t.tag.endswith("text")}
    assert set(resolve(SMALL).analyze().graph) <= texts


def test_missing_graphviz_package_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "graphviz", None)   # `import graphviz` now fails
    status, out = draw_file(tmp_path, SMALL, ".svg")
    err = capsys.readouterr().err.strip()
    assert status == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and "pip install 'cnndsl[viz]'" in err
    assert draw_file(tmp_path, SMALL, ".dot")[0] == 0    # text formats need no package


def test_missing_dot_program_is_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("graphviz", reason="the graphviz package is not installed")
    monkeypatch.setenv("PATH", str(tmp_path))            # no `dot` on it
    status, out = draw_file(tmp_path, SMALL, ".png")
    err = capsys.readouterr().err.strip()
    assert status == 2 and not out.exists() and len(err.splitlines()) == 1
    assert "apt-get install graphviz" in err and "brew install graphviz" in err and ".mmd" in err


def test_refuses_to_overwrite_a_file_or_a_folder(tmp_path, capsys):
    status, out = draw_file(tmp_path, SMALL, ".dot")
    out.write_text("mine")
    assert draw_file(tmp_path, SMALL, ".dot")[0] == 2 and out.read_text() == "mine"
    assert "--overwrite" in capsys.readouterr().err
    assert draw_file(tmp_path, SMALL, ".dot", "--overwrite")[0] == 0
    assert out.read_text().startswith("digraph")
    (tmp_path / "dir.svg").mkdir()
    assert main(["draw", SMALL, "-o", str(tmp_path / "dir.svg")]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["draw", SMALL, "-o", str(tmp_path / "net.txt")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.svg", "net.dot"]   # no temp files


@pytest.mark.parametrize("suffix", [".dot", ".mmd", ".svg"])
def test_draw_imports_no_torch(tmp_path, suffix):
    if suffix == ".svg":
        need_graphviz()
    out = tmp_path / f"r{suffix}"
    done = run_without_torch("draw", "resnet18", "-o", str(out), "--depth", "2")
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 0


def test_a_family_is_drawn_one_member_at_a_time(tmp_path, capsys):
    family = "specs/families/notes.yaml"
    assert draw_file(tmp_path, family, ".dot")[0] == 1
    assert "--set" in capsys.readouterr().err   # the analysis says how to pick one member
    values = ["--set", "N=2", "--set", "M=0", "--set", "K=1", "--set", "c=16", "--set", "h=128",
              "--set", "pool?=no"]
    status, out = draw_file(tmp_path, family, ".dot", *values)
    member = resolve(family).with_values([parse_set(v) for v in values[1::2]]).analyze()
    assert status == 0 and len(parse_dot(out.read_text())[0]) == len(member.graph)
