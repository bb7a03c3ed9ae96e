"""Shared test set-up: the helpers of tests/helpers.py, and fixtures used by several files.

pytest runs with `--import-mode=importlib`, so test files cannot import each other or
this file; they import `helpers`, which this puts on `sys.path`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402


@pytest.fixture
def vgg16_yaml(tmp_path) -> Path:
    """docs/language.md's VGG-16 spec, written to a file."""
    path = tmp_path / "vgg16.yaml"
    path.write_text(helpers.VGG16_YAML)
    return path
