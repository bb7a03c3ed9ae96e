"""Files that ship with cnndsl: the grammar and the zoo of specs.

In a checkout (or an editable install) they live at the top of the repository, in
`grammar/` and `specs/`; a wheel carries copies inside the package (see
pyproject.toml's force-include), so both places are looked at.
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _shipped(name: str) -> Path:
    inside = _PACKAGE / name
    return inside if inside.exists() else _PACKAGE.parent / name


def grammar_text() -> str:
    return (_shipped("grammar") / "cnndsl.lark").read_text(encoding="utf-8")


def zoo_dir() -> Path:
    return _shipped("specs")


def zoo_specs() -> dict[str, Path]:
    """Bundled specs by name (file stem), e.g. {'vgg16': .../vgg16.yaml}."""
    folder = zoo_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix in (".yaml", ".yml", ".cnn")}
