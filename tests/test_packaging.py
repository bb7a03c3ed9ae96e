"""The grammar and the zoo are found when cnndsl is installed from a wheel, not only
from a checkout (the README's Layout: `cnndsl/resources.py`)."""
import json
import subprocess
import sys
import zipfile

import pytest
from helpers import ROOT


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory):
    """A wheel built from this checkout, unpacked as pip would install it."""
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    if build.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{build.stderr}")
    [wheel] = out.glob("cnndsl-*.whl")
    site = out / "site"
    zipfile.ZipFile(wheel).extractall(site)
    return site


def test_wheel_carries_grammar_and_specs(wheel_site):
    assert (wheel_site / "cnndsl" / "grammar" / "cnndsl.lark").is_file()
    assert (wheel_site / "cnndsl" / "specs").is_dir()


def test_installed_wheel_analyzes(wheel_site, tmp_path):
    # Run from an empty folder with only the unpacked wheel on the path: no checkout to fall back on.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import cnndsl, cnndsl.cli; "
            "assert cnndsl.__file__.startswith(sys.argv[1]), cnndsl.__file__; "
            "sys.exit(cnndsl.cli.main(['analyze', sys.argv[2], '--json']))")
    zoo = sorted(p.stem for p in (wheel_site / "cnndsl" / "specs").glob("*.yaml"))
    target = zoo[0] if zoo else "INPUT(3, 8, 8) -> CONV3-4"
    result = subprocess.run([sys.executable, "-I", "-c", code, str(wheel_site), target],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["totals"]["params"] > 0
