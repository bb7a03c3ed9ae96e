"""docs/language.md is true: its examples work, and its tables match the table of kinds.

* Every fenced example is run. ```cnndsl must analyse with no diagnostic at all,
  ```cnndsl-warning with warnings but no error, ```cnndsl-error must raise `CnnDslError`
  or analyse with an error; ```yaml, ```yaml-warning and ```yaml-error are the same for a
  spec file loaded with `cnndsl.lang.spec.load`. A line `# error: TEXT` or
  `# warning: TEXT` (or `# note: TEXT`) in an example names text that a diagnostic of that severity must
  contain.
* ```cnndsl-family and ```yaml-family examples are families of several members, analysed
  as `cnndsl analyze` does (analysis.family) with no error; a `# members: 24` line (or
  analysed, distinct, duplicates, surviving, pareto, pruned) names a count of its summary,
  and `# with --set N=0..3 ...` gives it `--set` flags. A -error example of several
  members is analysed so too.
* The examples that work use every layer kind and join, and write every option of
  every kind at least once.
* The tables whose header starts `| kind |` have one row per kind of
  `cnndsl.layers.KINDS` and per join shorthand (RES, GATE: `join_words()`), with the
  kind's head places and every option with its default and bounds.
* The table of YAML keys lists `YAML_KEYS`.
* The repository cites its own docs, not files outside it.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import cnndsl
from cnndsl import CnnDslError
from cnndsl.analysis.family import analyze_family
from cnndsl.lang import family
from cnndsl.lang.spec import load
from cnndsl.lang.yaml_spec import YAML_KEYS
from cnndsl.layers import KINDS, REQUIRED, join_words

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "language.md"
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
CHECKED = {f"{lang}{suffix}" for lang in ("cnndsl", "yaml")
           for suffix in ("", "-warning", "-error", "-family")}
EXPECT = re.compile(r"#\s*(error|warning|note):\s*(.+?)\s*$", re.M)
COUNTS = re.compile(r"#\s*(members|analysed|distinct|duplicates|surviving|pareto|pruned):"
                    r"\s*([\d,]+)\s*$", re.M)
SETS = re.compile(r"#\s*with\s+(--set\s.*?)\s*$", re.M)


def examples() -> list[tuple[str, int, str]]:
    """(info string, line number, text) of every fenced block of the doc."""
    text = DOC.read_text(encoding="utf-8")
    return [(m.group(1), text.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(text)]


def checked_examples():
    return [pytest.param(info, body, id=f"{info}-line{line}")
            for info, line, body in examples() if info in CHECKED]


def _messages(diagnostics, severity: str) -> list[str]:
    return [d.message for d in diagnostics if d.severity == severity]


def _sets(body: str) -> list:
    return [family.parse_set(flag) for line in SETS.findall(body)
            for flag in re.findall(r"--set\s+(\S+)", line)]


def _several_members(spec) -> bool:
    if not spec.is_family:
        return False
    return family.member_count(family.variables(spec.program, spec.declared).values()) > 1


def _run(info: str, body: str, tmp_path: Path):
    """(spec, analysis, diagnostics): analysis None when a CnnDslError was raised; for a
    family, a `FamilyAnalysis`."""
    try:
        if info.startswith("yaml"):
            path = tmp_path / "example.yaml"
            path.write_text(body, encoding="utf-8")
            spec = load(path)
        else:
            spec = cnndsl.parse(body)
        spec = spec.with_values(_sets(body))
        if info.endswith("-family") or (info.endswith("-error") and _several_members(spec)):
            result = analyze_family(spec)
            diagnostics = result.notes + result.errors()
        else:
            result = spec.analyze()
            diagnostics = result.diagnostics
    except CnnDslError as e:
        errors = [e.message] + [d.message for d in e.diagnostics]
        return None, None, {"error": errors, "warning": [], "note": []}
    found = {s: _messages(diagnostics, s) for s in ("error", "warning", "note")}
    return spec, result, found


@pytest.mark.parametrize("info, body", checked_examples())
def test_example(info, body, tmp_path):
    _, analysis, found = _run(info, body, tmp_path)
    wanted = "error" if info.endswith("-error") else "warning" if info.endswith("-warning") else None
    if wanted == "error":
        assert found["error"], "this example should fail, but it analyses without an error"
    else:
        assert analysis is not None and not found["error"], found["error"]
        assert bool(found["warning"]) == (wanted == "warning"), found["warning"] or "no warning"
    for severity, text in EXPECT.findall(body):
        assert any(text in message for message in found[severity]), (
            f"no {severity} says {text!r}; the {severity}s: {found[severity]}")
    if info.endswith("-family"):
        assert hasattr(analysis, "members"), "a -family example must be a family of several members"
        summary = analysis.summary()
        summary["pruned"] = sum(summary["pruned"].values())
        for key, count in COUNTS.findall(body):
            assert summary[key] == int(count.replace(",", "")), (key, summary[key])


def test_the_doc_has_examples_of_every_kind():
    blocks = examples()
    assert {info for info, _, _ in blocks if info.startswith(("cnndsl", "yaml"))} <= CHECKED, \
        "an unknown kind of example; use one of " + ", ".join(sorted(CHECKED))
    assert {"cnndsl", "cnndsl-warning", "cnndsl-error", "yaml", "yaml-error",
            "cnndsl-family", "yaml-family"} <= {b[0] for b in blocks}


def test_the_working_examples_use_every_kind_and_option():
    used: set[str] = set()
    written: dict[str, set] = {}
    for info, _, body in examples():
        if info not in ("cnndsl", "cnndsl-warning"):
            continue
        graph = cnndsl.parse(body).graph()
        for name in graph:
            node = graph.nodes[name]
            kind = node["kind"].name
            used.add(kind)
            used.add(node["opts"].get("op", kind))  # RES, when it is built as an ADD
            written.setdefault(kind, set()).update(node["written"])
    words = set(KINDS) | set(join_words())  # the shorthands too: RES, GATE
    assert words <= used, sorted(words - used)
    for kind in KINDS.values():
        missing = {o.name for o in kind.options} - written.get(kind.name, set())
        assert not missing, f"no working example writes {kind.name}'s {', '.join(sorted(missing))}"


# --- the tables of kinds ---------------------------------------------------------------

COLUMNS = ["kind", "written", "head", "options", "meaning"]
OPTION = re.compile(r"`(\w+)=([^`]*)`([^;]*)")


def kind_rows() -> dict[str, dict[str, str]]:
    """Every row of the tables headed `| kind | ...`, by kind name."""
    rows: dict[str, dict[str, str]] = {}
    header = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if header[0] != "kind" or set(line) <= set("|-: "):
            continue
        assert header == COLUMNS, header
        name = cells[0].strip("`")
        assert name not in rows, f"two rows for {name}"
        rows[name] = dict(zip(COLUMNS, cells))
    return rows


def _head(kind) -> str:
    size, dash, slash = kind.head
    text = (f"{{{size}}}" if size else "") + (f"-{{{dash}}}" if dash else "") + (f"/{{{slash}}}" if slash else "")
    return f"`{text}`" if text else "—"


def _number(x) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _bounds(opt) -> str:
    if opt.low is not None and opt.high is not None:
        return f"{_number(opt.low)}–{_number(opt.high)}"
    if opt.low is not None:
        return f"≥ {_number(opt.low)}"
    return f"≤ {_number(opt.high)}" if opt.high is not None else ""


def _default_matches(default, text: str) -> bool:
    if default == REQUIRED:
        return text == "required"
    if default is None:
        return text == "derived"
    if isinstance(default, bool):
        return text == str(default).lower()
    try:
        return float(text) == float(default)
    except ValueError:
        return False


def test_every_kind_has_one_row_and_every_row_is_a_kind():
    rows = kind_rows()
    # RES is the join ADD(a, ID), GATE is MUL(a, ID): shorthands have rows of their own.
    words = set(KINDS) | set(join_words())
    assert words - set(rows) == set(), "kinds or join shorthands without a row"
    assert set(rows) - words == set(), "rows that are no kind"


@pytest.mark.parametrize("name", sorted(KINDS))
def test_the_row_of_a_kind_matches_the_table_of_kinds(name):
    kind, row = KINDS[name], kind_rows()[name]
    assert row["head"] == _head(kind), f"{name}'s head places are {_head(kind)}"
    documented = {m.group(1): (m.group(2), m.group(3).strip()) for m in OPTION.finditer(row["options"])}
    assert set(documented) == {o.name for o in kind.options}, row["options"]
    if not kind.options:
        assert row["options"] == "—"
    for opt in kind.options:
        default, rest = documented[opt.name]
        expected = ("required" if opt.default == REQUIRED else "derived" if opt.default is None
                    else opt.default)
        assert _default_matches(opt.default, default), f"{name}'s {opt.name} defaults to {expected}"
        assert rest.startswith(_bounds(opt)), f"{name}'s {opt.name} is bounded {_bounds(opt)!r}: {rest!r}"
    assert row["meaning"]


def test_the_yaml_keys_table_lists_every_key():
    text = DOC.read_text(encoding="utf-8")
    table = re.search(r"^\| key \| meaning \|\n\|[-|]+\|\n((?:\|.*\n)+)", text, re.M)
    assert table, "no table of YAML keys"
    keys = [re.match(r"\| `(\w+)`", line).group(1) for line in table.group(1).splitlines()]
    assert keys == list(YAML_KEYS)


# --- the repository cites its own docs ----------------------------------------------------

FOREIGN = re.compile(r"LANGUAGE\.md|DESIGN\.md|\bLANGUAGE \d|shared/|seeds/\w+\.txt")
SCANNED = ["README.md", "docs", "cnndsl", "grammar", "specs", "tests", "benchmarks", "cli.py",
           "pyproject.toml"]


def _text_files():
    for entry in SCANNED:
        path = ROOT / entry
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts or file == Path(__file__).resolve():
                continue
            try:
                yield file, file.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue


def test_the_repository_cites_no_file_outside_it():
    found = []
    for file, text in _text_files():
        rel = file.relative_to(ROOT).as_posix()
        for number, line in enumerate(text.splitlines(), 1):
            if FOREIGN.search(line):
                found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "cite docs/language.md (or the lecture notes by name) instead:\n" + "\n".join(found)


def test_the_readme_points_to_the_language_reference():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/language.md" in readme
    assert (ROOT / "docs" / "README.md").is_file()
