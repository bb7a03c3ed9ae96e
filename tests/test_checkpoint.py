"""Checkpoints: atomic writes, safe loading (weights_only), one-line errors for bad files,
and the spec rebuilt from the text stored inside."""
import os
import pickle
import signal
import zipfile

import pytest
import torch

from cnndsl.training import checkpoint
from cnndsl.cli import main
from cnndsl.errors import CnnDslError
from cnndsl.lang.spec import load, parse
from helpers import trained_run

SPEC = """\
name: tiny
input: [1, 8, 8]
blocks:
  unit(c): CONV3-c -> RELU
net: |
  unit(8) -> POOL -> hidden: FC-16 -> RELU -> FC-10
train:
  epochs: 1
  batch_size: 32
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("ckpt"), SPEC, "--limit", 100) / "last.pt"


# --- writing ---------------------------------------------------------------------------


def test_atomic_write_replaces_whole_files_only(tmp_path):
    path = tmp_path / "f.bin"
    checkpoint.atomic_write(path, lambda f: f.write(b"old"))
    assert path.read_bytes() == b"old" and oct(path.stat().st_mode & 0o777) != "0o600"

    def dies_halfway(f):
        f.write(b"half of the n")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_write(path, dies_halfway)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_ctrl_c_waits_until_the_files_are_written():
    finished = False
    with pytest.raises(KeyboardInterrupt):
        with checkpoint.sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            finished = True
    assert finished


def test_a_checkpoint_holds_what_resuming_needs(trained):
    state = checkpoint.load(trained)
    assert set(checkpoint.KEYS) <= set(state)
    assert state["spec"]["text"] == SPEC and state["spec"]["suffix"] == ".yaml"
    assert state["input_shape"] == [1, 8, 8] and state["epoch"] == 1
    assert isinstance(state["rng"]["torch"], torch.Tensor) and isinstance(state["rng"]["order"], torch.Tensor)
    assert state["config"]["batch_size"] == 32 and state["optimizer"]["state"]
    # Only plain data: it loads with the safe unpickler.
    torch.load(trained, weights_only=True)


# --- reading ---------------------------------------------------------------------------


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited",))


def _bad_files(folder, good):
    (folder / "random.pt").write_bytes(os.urandom(4096))
    (folder / "truncated.pt").write_bytes(good.read_bytes()[:3000])
    (folder / "exploit.pt").write_bytes(pickle.dumps({"model": Exploit()}))
    with zipfile.ZipFile(folder / "exploit_zip.pt", "w") as z:   # the torch zip layout
        z.writestr("archive/data.pkl", pickle.dumps({"model": Exploit()}))
        z.writestr("archive/version", "3\n")
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, folder / "foreign.pt")
    torch.save([torch.zeros(2)], folder / "list.pt")
    state = checkpoint.load(good)
    torch.save({**state, "version": 99}, folder / "future.pt")
    torch.save({**state, "spec": {**state["spec"], "text": state["spec"]["text"] + "# edit\n"}},
               folder / "tampered.pt")
    torch.save({k: v for k, v in state.items() if k != "optimizer"}, folder / "no_optimizer.pt")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")   # the exploit's own pickle
@pytest.mark.parametrize("name, words", [
    ("random.pt", "not a readable cnndsl checkpoint"),
    ("truncated.pt", "not a readable cnndsl checkpoint"),
    ("exploit.pt", "not a readable cnndsl checkpoint"),
    ("exploit_zip.pt", "not a readable cnndsl checkpoint"),
    ("foreign.pt", "not a cnndsl checkpoint (it holds state_dict, epoch)"),
    ("list.pt", "not a cnndsl checkpoint (it holds list)"),
    ("future.pt", "checkpoint version 99"),
    ("tampered.pt", "the spec text does not match its sha256"),
    ("no_optimizer.pt", "damaged cnndsl checkpoint: no optimizer"),
    ("missing.pt", "no such checkpoint"),
])
def test_bad_checkpoints_are_one_line_errors(tmp_path, trained, monkeypatch, capsys, name, words):
    _bad_files(tmp_path, trained)
    monkeypatch.chdir(tmp_path)   # where the exploit would leave its mark
    with pytest.raises(CnnDslError) as e:
        checkpoint.load(tmp_path / name)
    assert words in e.value.message and "\n" not in str(e.value)
    status = main(["eval", str(tmp_path / name)])
    _, err = capsys.readouterr()
    assert status == 2 and err.count("\n") == 1 and words in err and "Traceback" not in err
    assert not (tmp_path / "exploited").exists()


def test_resume_from_a_corrupt_checkpoint(tmp_path, trained, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(trained.read_bytes()[:-100])
    (tmp_path / "tiny.yaml").write_text(SPEC)
    status = main(["train", str(tmp_path / "tiny.yaml"), "--out", str(run), "--resume"])
    err = capsys.readouterr().err
    assert status == 2 and "not a readable cnndsl checkpoint" in err and err.count("\n") == 1


# --- the spec inside -------------------------------------------------------------------


def test_the_stored_yaml_spec_is_parsed_as_yaml(trained):
    spec = checkpoint.spec_of(checkpoint.load(trained), trained)
    original = load(trained.parent.parent / "tiny.yaml")
    assert spec.name == "tiny" and spec.train == original.train and spec.digest == original.digest
    assert spec.analyze().totals() == original.analyze().totals()


@pytest.mark.parametrize("suffix", [".cnn", ""])
def test_cnn_files_and_inline_text_are_parsed_as_dsl(tmp_path, suffix):
    text = "INPUT(1, 8, 8) -> CONV3-4 -> FC-10\n"
    if suffix:
        (tmp_path / "n.cnn").write_text(text)
        spec = load(tmp_path / "n.cnn")
    else:
        spec = parse(text)
    record = checkpoint.spec_record(spec)
    assert record["suffix"] == suffix
    rebuilt = checkpoint.spec_of({"spec": record})
    assert rebuilt.digest == spec.digest and rebuilt.analyze().output_shape == (10,)


def test_init_from_takes_a_bare_state_dict(tmp_path):
    torch.save({"conv1.weight": torch.zeros(4, 1, 3, 3)}, tmp_path / "w.pt")
    assert list(checkpoint.load_weights_file(tmp_path / "w.pt")) == ["conv1.weight"]
    torch.save({"epoch": 1}, tmp_path / "none.pt")
    with pytest.raises(CnnDslError, match="holds no weights"):
        checkpoint.load_weights_file(tmp_path / "none.pt")
