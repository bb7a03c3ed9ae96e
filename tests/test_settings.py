"""The one table of training settings (cnndsl/training/settings.py): the Config dataclass,
the `train:` checks, the flags of `cnndsl train` and the README all come from it, and a
setting's value is checked the same way wherever it is written."""
import argparse
import json
import re
import subprocess
import sys
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import pytest

import cnndsl
from cnndsl.cli import build_parser, main
from cnndsl.errors import CnnDslError
from cnndsl.lang.spec import load
from cnndsl.training.settings import SETTINGS, Config, make_config, optimizer_name

ROOT = Path(__file__).resolve().parents[1]
NET = "INPUT(1, 8, 8) -> CONV3-4 -> RELU -> FC-10"
SPEC = """\
name: tiny
input: [1, 8, 8]
net: CONV3-4 -> RELU -> FC-10
train:
{train}"""
QUICK = ["--data", "synthetic:64", "--epochs", "1", "--limit", "32"]

# Config as it was before the table: field → default (names, defaults and order stay).
# Config's fields and defaults: those before the table, plus cache and workers since.
FIELDS_BEFORE = {
    "data": "digits", "val_fraction": 0.1, "limit": None, "cache": "auto", "workers": None,
    "skip_bad_images": False,
    "augment": {}, "init": "default",
    "init_from": None, "freeze": None, "strict": False, "epochs": 10, "batch_size": 64,
    "optimizer": "sgd", "lr": None, "momentum": 0.9, "weight_decay": 0.0, "schedule": "cosine",
    "warmup_epochs": 0.0, "step_size": None, "gamma": 0.1, "label_smoothing": 0.0, "seed": 0,
    "device": "auto", "bf16": True, "channels_last": True, "compile": False,
    "tensorboard": False,   # added with the logs (metrics.csv, TensorBoard)
}
# The flags of `cnndsl train` before the table (flag → dest).
FLAGS_BEFORE = {
    "--data": "data", "--epochs": "epochs", "--batch-size": "batch_size", "--lr": "lr",
    "--optimizer": "optimizer", "--momentum": "momentum", "--weight-decay": "weight_decay",
    "--schedule": "schedule", "--warmup-epochs": "warmup_epochs",
    "--label-smoothing": "label_smoothing", "--init": "init", "--device": "device",
    "--seed": "seed", "--val-fraction": "val_fraction", "--limit": "limit", "--no-bf16": "bf16",
    "--no-channels-last": "channels_last", "--compile": "compile", "--init-from": "init_from",
    "--freeze": "freeze", "--strict": "strict",
    # added with streaming data (a folder read from disk in worker processes)
    "--cache": "cache", "--workers": "workers", "--skip-bad-images": "skip_bad_images",
    # added with the logs
    "--tensorboard": "tensorboard",
    # added to compare families fairly: a CIFAR-10 recipe's augmentation off on digits
    "--no-augment": "augment",
}


def spec_file(tmp_path, train: str, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(SPEC.format(train=train), encoding="utf-8")
    return path


def run_cli(capsys, *argv):
    status = main([*map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


def train_parser() -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["train"]


# --- every documented form of a setting, in analyze and in train ------------------------

FORMS = [
    # train: section, analyze's optimiser, optimizer states per weight, Config fields
    ("  optimizer: adam\n", "adam", 2, {"optimizer": "adam", "lr": 1e-3}),
    ("  optimizer: {name: adamw, lr: 0.002}\n", "adamw", 2, {"optimizer": "adamw", "lr": 0.002}),
    ("  optimizer: {lr: 0.05}\n", "sgd", 1, {"optimizer": "sgd", "lr": 0.05}),
    ("  schedule: cosine\n", "sgd", 1, {"schedule": "cosine", "lr": 0.01}),
    ("  schedule: {name: step, step_size: 2, gamma: 0.5}\n", "sgd", 1,
     {"schedule": "step", "step_size": 2, "gamma": 0.5}),
]


@pytest.mark.parametrize("train, optimizer, states, expected", FORMS, ids=[f[0].strip() for f in FORMS])
def test_documented_forms_in_analyze(tmp_path, capsys, train, optimizer, states, expected):
    path = spec_file(tmp_path, train)
    status, out, err = run_cli(capsys, "analyze", path)
    assert status == 0, err
    assert f"{optimizer} state" in out and "Traceback" not in err
    status, out, err = run_cli(capsys, "analyze", path, "--json")
    assert status == 0, err
    estimate = json.loads(out)["totals"]["memory"]["training_estimate"]
    assert estimate["optimizer"] == optimizer
    assert estimate["optimizer_state"] == states * estimate["weights"]


@pytest.mark.parametrize("train, optimizer, states, expected", FORMS, ids=[f[0].strip() for f in FORMS])
def test_documented_forms_in_make_config(tmp_path, train, optimizer, states, expected):
    config = make_config(load(spec_file(tmp_path, train)))
    assert {name: getattr(config, name) for name in expected} == expected
    assert config.optimizer == optimizer


@pytest.mark.parametrize("train", [FORMS[0][0], FORMS[1][0], FORMS[4][0]],
                         ids=["optimizer: adam", "optimizer: {name: adamw}", "schedule: {name: step}"])
def test_documented_forms_in_train(tmp_path, capsys, train):
    pytest.importorskip("torch")
    out = tmp_path / "run"
    status, _, err = run_cli(capsys, "train", spec_file(tmp_path, train), *QUICK, "--out", out)
    assert status == 0, err
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1


def test_a_malformed_optimizer_is_refused_by_analyze_and_train_alike(tmp_path, capsys):
    path = spec_file(tmp_path, "  optimizer: [adam]\n")
    wanted = f"{path}:5:3: error: optimizer must be one of sgd, adam, adamw, got ['adam']"
    status, out, err = run_cli(capsys, "analyze", path)
    assert status == 1 and "Traceback" not in err
    assert err.splitlines()[0] == wanted
    status, _, err = run_cli(capsys, "train", path, *QUICK, "--out", tmp_path / "run")
    assert status == 1 and "Traceback" not in err
    assert err.splitlines()[0] == wanted
    # The Python API's analysis goes on with the default optimiser for its memory figure.
    assert load(path).analyze().to_dict()["totals"]["memory"]["training_estimate"]["optimizer"] == "sgd"


def test_optimizer_name_reads_both_forms_and_never_raises():
    assert optimizer_name({"optimizer": "adamw"}) == "adamw"
    assert optimizer_name({"optimizer": {"name": "adam", "lr": 0.1}}) == "adam"
    assert optimizer_name({"optimizer": {"lr": 0.1}}) == "sgd"
    for bad in ({"optimizer": "adagrad"}, {"optimizer": None}, {"optimizer": {"name": {}}},
                {"optimizer": 10 ** 5000}, {"epoch": 3}, None, "adam", ["optimizer"]):
        assert optimizer_name(bad) == "sgd"


# --- the table, Config, the flags and the README agree ----------------------------------


def test_config_fields_are_the_table_and_unchanged():
    assert [f.name for f in fields(Config)] == [s.name for s in SETTINGS] == list(FIELDS_BEFORE)
    assert asdict(Config()) == FIELDS_BEFORE
    for f, s in zip(fields(Config), SETTINGS):
        assert f.metadata["help"] == s.why and s.why   # every setting says what it is for
        if f.default is MISSING:
            assert f.default_factory() == s.default
    config = Config(epochs=3, optimizer="adam", augment={"hflip": True})
    assert (config.epochs, config.optimizer, config.batch_size) == (3, "adam", 64)
    assert Config().augment is not Config().augment   # a fresh dict each time


def test_flags_are_the_table_and_unchanged():
    options = {opt: a for a in train_parser()._actions for opt in a.option_strings}
    settings_flags = {s.flag: s.name for s in SETTINGS if s.flag}
    assert settings_flags == FLAGS_BEFORE
    # The flags that are not training settings: where the run goes, and which member of a
    # family it trains (`--set`, as for analyze).
    assert set(options) == set(FLAGS_BEFORE) | {"-h", "--help", "--out", "--resume", "--overwrite",
                                                "--set"}
    from cnndsl.cli.train import CONFIG_FLAGS
    assert set(CONFIG_FLAGS) == set(FLAGS_BEFORE.values())
    for s in SETTINGS:
        if s.flag is None:
            continue
        action = options[s.flag]
        assert action.dest == s.name and action.default is None and action.help == s.help
        if s.choices:
            assert list(action.choices) == list(s.choices)
        if s.type is bool:
            assert action.nargs == 0 and action.const is (not s.flag.startswith("--no-"))
    args = train_parser().parse_args([NET, "--epochs", "3", "--lr", "0.5", "--no-bf16", "--compile",
                                      "--optimizer", "adamw", "--limit", "7"])
    assert (args.epochs, args.lr, args.bf16, args.compile, args.optimizer, args.limit) == \
        (3, 0.5, False, True, "adamw", 7)
    assert type(args.epochs) is int and type(args.lr) is float
    assert args.seed is None and args.channels_last is None and args.strict is None


def test_flag_types_are_as_before(capsys):
    with pytest.raises(SystemExit):
        train_parser().parse_args([NET, "--epochs", "2.5"])
    assert "invalid int value: '2.5'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_parser().parse_args([NET, "--optimizer", "adagrad"])
    assert "invalid choice: 'adagrad'" in capsys.readouterr().err


def test_spec_only_and_flag_only_settings():
    spec_only = {s.name for s in SETTINGS if s.spec_only}
    flag_only = {s.name for s in SETTINGS if s.flag_only}
    assert spec_only == {"step_size", "gamma"}
    assert flag_only == {"limit", "device", "bf16", "channels_last", "compile", "init_from",
                         "freeze", "strict", "cache", "workers", "skip_bad_images"}


def readme_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("Settings come from three places"):]
    table = re.search(r"^\|.*?(?=\n\n)", section, re.S | re.M).group()
    rows = [re.split(r"(?<!\\)\|", line)[1:-1] for line in table.splitlines()[2:]]
    return [[cell.strip() for cell in row] for row in rows]


def test_the_readme_table_names_every_setting():
    rows = readme_rows()
    for s in SETTINGS:
        if s.key:
            row = next((r for r in rows if r[0] == f"`{s.key}`"), None)
            assert row is not None, f"README: no row for `{s.key}`"
        else:
            row = next((r for r in rows if r[0] == "" and re.search(rf"`{s.flag}\b", r[1])), None)
            assert row is not None, f"README: no row for {s.flag}"
        assert (s.flag is None) == (row[1] == ""), (s.name, row)
        if s.flag:
            assert re.search(rf"`{s.flag}(`| )", row[1]), (s.name, row)
    keys = {f"`{s.key}`" for s in SETTINGS if s.key}
    assert {r[0] for r in rows if r[0]} == keys                       # no row for a lost key
    flags = set(re.findall(r"`(--[a-z0-9-]+)", " ".join(r[1] for r in rows)))
    assert flags == {s.flag for s in SETTINGS if s.flag}


def test_init_choices_are_what_the_compiler_builds():
    torch_fx = pytest.importorskip("cnndsl.backends.torch_fx")
    init = next(s for s in SETTINGS if s.name == "init")
    module = torch_fx.build_module(cnndsl.parse("INPUT(1, 4, 4) -> CONV3-2 -> FC-3").analyze().graph)
    for scheme in init.choices:                      # each choice is one the compiler builds
        torch_fx.initialize(module, scheme)
    with pytest.raises(ValueError):
        torch_fx.initialize(module, "orthogonal")   # and nothing else passes for one


def test_settings_and_the_train_flags_do_not_import_torch():
    code = ("import sys\n"
            "from cnndsl.cli import build_parser\n"
            "from cnndsl.training.settings import make_config, optimizer_name\n"
            "build_parser().parse_args(['train', 'x', '--epochs', '2'])\n"
            "make_config(None, {'epochs': 2, 'optimizer': 'adam'})\n"
            "assert optimizer_name({'optimizer': 'adam'}) == 'adam'\n"
            "assert 'torch' not in sys.modules, 'imported torch'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr


# --- one check, wherever a value is written ---------------------------------------------

SAME = [
    ("--batch-size", "0", "  batch_size: 0\n", "batch_size must be a number ≥ 1 and ≤ 2**24, got 0"),
    ("--batch-size", str(2**24 + 1), f"  batch_size: {2**24 + 1}\n", "batch_size must be a number"),
    ("--epochs", "1000001", "  epochs: 1000001\n", "epochs must be a number ≥ 1 and ≤ 1000000"),
    ("--seed", str(2**70), f"  seed: {2**70}\n", "seed must be a number ≥ 0 and < 2**63"),
    ("--seed", "-1", "  seed: -1\n", "seed must be a number ≥ 0"),
    ("--lr", "0", "  optimizer: {lr: 0}\n", "lr must be a number > 0, got 0.0"),
    ("--momentum", "1", "  optimizer: {momentum: 1}\n", "momentum must be a number ≥ 0 and < 1"),
    ("--val-fraction", "1.5", "  val_fraction: 1.5\n", "val_fraction must be a number ≥ 0 and < 1"),
    ("--label-smoothing", "nan", "  label_smoothing: .nan\n", "label_smoothing must be a finite number"),
    ("--data", "", "  data: ''\n", "data must be text, got ''"),
]


@pytest.mark.parametrize("flag, value, train, words", SAME, ids=[f"{s[0]} {s[1][:8]}" for s in SAME])
def test_flag_and_yaml_give_the_same_error(tmp_path, capsys, flag, value, train, words):
    plain = spec_file(tmp_path, "  epochs: 1\n", "plain.yaml")
    status, _, flag_err = run_cli(capsys, "train", plain, flag, value, "--out", tmp_path / "a")
    assert status == 2 and flag_err.startswith("error: ") and "Traceback" not in flag_err
    path = spec_file(tmp_path, train)
    status, _, yaml_err = run_cli(capsys, "train", path, "--out", tmp_path / "b")
    assert status == 1 and yaml_err.startswith(f"{path}:5:") and "Traceback" not in yaml_err
    assert words in flag_err
    assert flag_err.strip().removeprefix("error: ") == yaml_err.splitlines()[0].split(" error: ", 1)[1]
    assert len(flag_err.strip().splitlines()) == 1


# --- numbers too big for what reads them ------------------------------------------------


def test_a_seed_beyond_64_bits_is_one_line(tmp_path, capsys):
    status, _, err = run_cli(capsys, "train", NET, *QUICK, "--seed", 2**70, "--out", tmp_path / "r")
    assert status == 2 and "Traceback" not in err
    assert err.strip() == "error: seed must be a number ≥ 0 and < 2**63, got 1180591620717411303424"


def test_a_huge_float_batch_size_is_one_line(tmp_path, capsys):
    path = spec_file(tmp_path, "  batch_size: 1.0e+300\n")
    status, _, err = run_cli(capsys, "train", path, *QUICK, "--out", tmp_path / "run")
    assert status == 1 and "Traceback" not in err
    assert err.splitlines()[0] == (f"{path}:5:3: error: batch_size must be a number ≥ 1 and "
                                   f"≤ 2**24, got a number with 301 digits")


@pytest.mark.parametrize("flag", ["--seed", "--limit", "--epochs", "--batch-size"])
def test_a_flag_with_5000_digits_is_one_line(tmp_path, capsys, flag):
    status, _, err = run_cli(capsys, "train", NET, *QUICK, flag, "7" * 5000, "--out", tmp_path / "r")
    assert status == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and len(err) < 200
    setting = next(s for s in SETTINGS if s.flag == flag)
    assert re.fullmatch(rf"error: {setting.name} must be a number ≥ \d+ and [<≤] \S+, "
                        r"got a number with 5000 digits", err.strip()), err


def test_a_float_flag_with_5000_digits_is_one_line(tmp_path, capsys):
    status, _, err = run_cli(capsys, "train", NET, *QUICK, "--lr", "9" * 5000, "--out", tmp_path / "r")
    assert status == 2 and err.strip() == "error: lr must be a finite number, got inf"


def test_5000_digits_as_yaml_text_is_one_line(tmp_path, capsys):
    path = spec_file(tmp_path, f"  seed: '{'1' * 5000}'\n")
    status, _, err = run_cli(capsys, "train", path, *QUICK, "--out", tmp_path / "run")
    assert status == 1 and "Traceback" not in err
    first = err.splitlines()[0]     # then the spec's line, quoted (5000 digits of it)
    assert first == (f"{path}:5:3: error: seed must be a number ≥ 0 and < 2**63, "
                     f"got a number with 5000 digits")


@pytest.mark.parametrize("name", ["seed", "epochs", "lr", "gamma", "optimizer", "data", "augment"])
def test_huge_python_ints_are_one_line(name):
    with pytest.raises(CnnDslError) as e:
        make_config(None, {name: -(10 ** 5000)} if name != "augment" else {name: [10 ** 5000]})
    message = e.value.message
    assert message.startswith(f"{name} must be") or message.startswith("augment must be")
    assert len(message) < 300
    if name in ("seed", "epochs", "lr", "gamma", "optimizer", "data"):
        assert "a number with 5001 digits" in message


@pytest.mark.parametrize("command", ["analyze", "train"])
def test_5000_digits_in_yaml_is_one_line(tmp_path, capsys, command):
    # An unquoted integer is refused as the YAML is read (lang/yaml_spec.py), before the
    # settings see it: no ValueError from int() in either command.
    path = spec_file(tmp_path, f"  seed: {'1' * 5000}\n")
    extra = [*QUICK, "--out", tmp_path / "run"] if command == "train" else []
    status, _, err = run_cli(capsys, command, path, *extra)
    assert status == 1 and "Traceback" not in err
    assert err.startswith(f"{path}:5:9: error: ") and len(err.splitlines()[0]) < 300


@pytest.mark.parametrize("train, words", [
    ("  epoch: 3\n", "4:3: error: unknown train key 'epoch' — did you mean 'epochs'?"),
    ("  batch_size: 0\n", "4:3: error: batch_size must be a number ≥ 1"),
    ("  optimizer: {name: adagrad}\n", "4:15: error: optimizer must be one of sgd, adam, adamw"),
])
def test_analyze_checks_the_train_section_too(tmp_path, capsys, train, words):
    # The reference (docs/language.md, Files): unknown keys are errors, at their line —
    # also in `cnndsl analyze`, not only when `cnndsl train` reads them.
    path = tmp_path / "spec.yaml"
    path.write_text("input: [1, 8, 8]\nnet: CONV3-4 -> FC-10\ntrain:\n" + train)
    assert main(["analyze", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:{words}" in err and "Traceback" not in err


def test_no_augment_empties_the_specs_augmentation(tmp_path):
    path = spec_file(tmp_path, "  augment: {hflip: true, crop: 2}")
    spec = load(path)
    assert make_config(spec).augment == {"hflip": True, "crop": 2}
    given = train_parser().parse_args([str(path), "--no-augment"])
    assert given.augment == {}
    assert make_config(spec, {"augment": given.augment}).augment == {}
    assert train_parser().parse_args([str(path)]).augment is None   # not given: the spec's stays


def test_a_run_with_no_augment_records_none(tmp_path, capsys):
    path = spec_file(tmp_path, "  augment: {hflip: true, crop: 2}")
    status, _, err = run_cli(capsys, "train", path, *QUICK, "--no-augment", "--out", tmp_path / "run")
    assert status == 0, err
    from cnndsl.training import checkpoint

    assert checkpoint.load(tmp_path / "run" / "last.pt")["config"]["augment"] == {}
