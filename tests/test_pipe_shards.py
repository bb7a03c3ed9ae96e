"""pipe_shards.py and shards.PipeSplit: WebDataset shards streamed from commands
(`--data wds:pipe:COMMAND`), written with tarfile in tmp_path and read through `cat` and
`gzip -dc`.

What is compared with what: the streamed samples with the same shards read by random access
(`shards.index_shards` / `ShardSplit`, the path the other tests check against files); the
holdout sizes with the rule the module documents, computed by hand; the processes with
/proc (nothing of a command's process group may outlive its reader).
"""
from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ROOT, memory_limit_prelude, run_main, tiny_spec

from cnndsl.errors import CnnDslError
from cnndsl.training import pipe_shards, shards
from cnndsl.training.data import load_data
from cnndsl.training.images import Recipe
from cnndsl.training.pipe_shards import ShardStream, index_pipe
from cnndsl.training.shards import PipeSplit, ShardSplit, _StreamedSamples, index_shards

CROP = Recipe.from_augment({"resized_crop": True, "hflip": True})
MiB = 2 ** 20


# --- shards in tmp_path -----------------------------------------------------------------------


def image_bytes(seed: int) -> bytes:
    """A PNG or JPEG of its own size: crops and resizes differ from image to image."""
    rng = np.random.default_rng(seed)
    w, h = 20 + seed % 17, 16 + seed % 11
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG" if seed % 2 else "JPEG")
    return buf.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, shards_: int = 6, per_shard: int = 4, classes: int | None = None,
                 prefix: str = "train") -> str:
    """`prefix`-{0..shards_-1}.tar (and .tar.gz twins); sample n is `s{n:04d}` with label n
    (n mod `classes`), so every sample can be told apart by its label. Returns the brace
    pattern of the .tar files."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for k in range(shards_):
        path = folder / f"{prefix}-{k}.tar"
        with tarfile.open(path, "w") as tar:
            for _ in range(per_shard):
                ext = "png" if n % 2 else "jpg"
                add(tar, f"s{n:04d}.{ext}", image_bytes(n))
                add(tar, f"s{n:04d}.cls", b"%d" % (n % classes if classes else n))
                n += 1
        (folder / f"{prefix}-{k}.tar.gz").write_bytes(gzip.compress(path.read_bytes()))
    return f"{folder}/{prefix}-{{0..{shards_ - 1}}}.tar"


def error_of(fn, *args, **kw) -> str:
    with pytest.raises(CnnDslError) as e:
        fn(*args, **kw)
    assert "\n" not in e.value.message and "Traceback" not in e.value.message
    return e.value.message


def group_alive(pgid: int) -> list[int]:
    """Processes (not zombies) still in process group `pgid`, from /proc."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()   # after "pid (comm) "
        if fields[0] != "Z" and int(fields[2]) == pgid:
            alive.append(int(entry.name))
    return alive


def none_left(pids: list[int], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while any(group_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def six(tmp_path):
    """Six shards of 4 samples, labels 0..23, and the pipe: spec reading them with cat."""
    pattern = write_shards(tmp_path / "set")
    return tmp_path / "set", f"pipe:cat {pattern}"


def whole_split(spec: str, workers: int = 0, recipe: Recipe = Recipe(), seed: int = 3):
    index = index_pipe(spec)
    rows = index.rows(range(len(index.commands)))
    labels = torch.as_tensor(np.concatenate(index.labels))
    return index, PipeSplit(index, rows, labels, (3, 12, 12), recipe, seed, workers)


# --- commands, roles -----------------------------------------------------------------------------


def test_a_pattern_gives_one_command_per_shard():
    assert pipe_shards.pipe_commands("pipe:curl -s https://h/train-{000..002}.tar") == [
        "curl -s https://h/train-000.tar", "curl -s https://h/train-001.tar",
        "curl -s https://h/train-002.tar"]
    assert pipe_shards.argv_of("sh -c 'exit 3'") == ["sh", "-c", "exit 3"]   # words, no shell
    assert "cannot split it into words" in error_of(pipe_shards.pipe_commands, "pipe:cat 'x.tar")
    assert "needs a command" in error_of(pipe_shards.pipe_commands, "pipe:  ")
    assert "names this command twice" in error_of(pipe_shards.pipe_commands, "pipe:cat {a,a}.tar")


def test_roles_come_from_the_shard_names():
    role = pipe_shards.shard_role
    assert role("curl -s https://h/imagenet1k-train-0007.tar") == "train"
    assert role("curl -s https://h/imagenet1k-validation-03.tar") == "val"
    assert role("aws s3 cp s3://b/test-2.tar -") == "test"        # the last .tar argument
    assert role("gzip -dc /d/val_0.tar.gz") == "val"
    assert role("cat /data/retest-1.tar") is None                    # a word, not a substring
    assert role("cat /val/shard-1.tar") is None                      # the file name, not a folder
    assert role("cat train-val-1.tar") is None                       # two roles: none


def test_holdouts_are_whole_shards(tmp_path):
    # The documented rule, by hand: 10 training shards → round(0.2·10) = 2 test shards;
    # of the 8 left, round(0.25·8) = 2 validate; --limit then cuts the training rows.
    spec = "pipe:cat " + write_shards(tmp_path / "t", shards_=10, per_shard=3)
    data = load_data(f"wds:{spec}", (3, 12, 12), val_fraction=0.25, cache="stream")
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 6)
    shard_of = lambda split: {int(y) // 3 for y in split.y}   # label n lies in shard n // 3
    assert len(shard_of(data.test)) == 2 and len(shard_of(data.val)) == 2
    assert not shard_of(data.train) & (shard_of(data.val) | shard_of(data.test))
    assert len(load_data(f"wds:{spec}", (3, 12, 12), val_fraction=0.25, limit=5,
                         cache="stream").train) == 5
    # Named roles: test shards test, val shards next to them validate, nothing is carved.
    write_shards(tmp_path / "n", shards_=2, per_shard=2, prefix="test")
    write_shards(tmp_path / "n", shards_=1, per_shard=2, prefix="val")
    write_shards(tmp_path / "n", shards_=3, per_shard=2, prefix="train")
    named = f"wds:pipe:cat {tmp_path}/n/{{train-{{0..2}},test-{{0,1}},val-0}}.tar"
    data = load_data(named, (3, 12, 12), val_fraction=0.5, cache="stream")
    assert (len(data.train), len(data.val), len(data.test)) == (6, 2, 4)


# --- one shard's stream --------------------------------------------------------------------------


def test_a_stream_gives_what_random_access_gives(six):
    folder, spec = six
    local = index_shards(str(folder / "train-0.tar"))
    for command in (f"cat {folder}/train-0.tar", f"gzip -dc {folder}/train-0.tar.gz",
                    f"cat {folder}/train-0.tar.gz"):   # tarfile's r|* reads gzip too
        samples = list(ShardStream(command, keep=lambda k: True))
        assert [s.label for s in samples] == local.splits["train"][1].tolist() == [0, 1, 2, 3]
        with open(folder / "train-0.tar", "rb") as f:
            for s, offset, size in zip(samples, local.table.offset, local.table.size):
                f.seek(int(offset))
                assert s.data == f.read(int(size)) and s.key == f"s{s.label:04d}"


def test_a_reader_stopped_early_leaves_no_process(six):
    folder, _ = six
    # sh runs cat and then sleep: closing must kill the whole group, sleep included.
    command = f"sh -c 'cat {folder}/train-0.tar; sleep 60'"
    stream = ShardStream(command)
    it = iter(stream)
    next(it)
    pgid = stream.pipe.proc.pid
    assert group_alive(pgid)
    stream.close()
    assert stream.pipe.proc.returncode is not None and none_left([pgid])
    stream = ShardStream(command)   # dropping the iterator does the same
    it = iter(stream)
    next(it)
    pgid = stream.pipe.proc.pid
    it.close()
    assert stream.pipe.proc.returncode is not None and none_left([pgid])


@pytest.mark.parametrize("command, words", [
    ("false", ["'pipe:false' exited with status 1"]),
    ("sh -c 'echo first >&2; echo no such bucket >&2; exit 3'",
     ["exited with status 3: no such bucket"]),
    ("no-such-program-cnndsl x.tar", ["program 'no-such-program-cnndsl' not found"]),
    ("echo this is not a tar", ["did not write a tar archive"]),
    ("sh -c 'kill -9 $$'", ["was killed by signal SIGKILL"]),
])
def test_failing_commands_are_one_line(command, words):
    message = error_of(list, ShardStream(command))
    for w in words:
        assert w in message, message


def test_damaged_streams_are_one_line(six, tmp_path, monkeypatch):
    folder, _ = six
    whole = (folder / "train-0.tar").read_bytes()
    index = index_shards(str(folder / "train-0.tar"))
    end_of_data = int(index.table.offset[-1] + index.table.size[-1])
    for name, cut in (("in_data", end_of_data - 10), ("in_header", int(index.table.offset[-1]) - 300),
                      ("at_boundary", -(-end_of_data // 512) * 512)):
        (tmp_path / f"{name}.tar").write_bytes(whole[:cut])
        message = error_of(list, ShardStream(f"cat {tmp_path}/{name}.tar"))
        assert "truncated" in message and f"{name}.tar" in message, (name, message)
    (tmp_path / "two.tar").write_bytes(whole + whole)
    assert "after the end of its tar archive" in error_of(list, ShardStream(f"cat {tmp_path}/two.tar"))
    half = (folder / "train-0.tar.gz").stat().st_size // 2
    assert "is truncated" in error_of(list, ShardStream(f"head -c {half} {folder}/train-0.tar.gz"))
    monkeypatch.setattr(shards, "MAX_IMAGE_BYTES", 100)
    message = error_of(list, ShardStream(f"cat {folder}/train-0.tar"))
    assert "'pipe:cat" in message and "sample 's0000' has a" in message and "more than the 100 B" in message


def test_the_sample_rules_are_the_random_access_ones(tmp_path):
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        add(tar, "a.jpg", image_bytes(1))
        add(tar, "a.cls", b"0")
        add(tar, "b.jpg", image_bytes(2))   # no label
    message = error_of(list, ShardStream(f"cat {tmp_path}/x.tar"))
    assert message == (f"'pipe:cat {tmp_path}/x.tar': sample 'b' has an image but no label "
                       "(.cls, .label or .target)")   # shards.py's words, its shard a command


def test_a_silent_command_times_out(monkeypatch):
    monkeypatch.setattr(pipe_shards, "PIPE_TIMEOUT", 1.0)
    stream = ShardStream("sleep 30")
    started = time.monotonic()
    assert "wrote nothing for 1 s" in error_of(list, stream)
    assert time.monotonic() - started < 10 and none_left([stream.pipe.proc.pid])


# --- the index ---------------------------------------------------------------------------------


def test_the_index_is_cached_and_checked(six, tmp_path, monkeypatch):
    folder, spec = six
    runs = tmp_path / "run"
    first = index_pipe(spec, runs)
    assert [a.tolist() for a in first.labels] == [list(range(4 * k, 4 * k + 4)) for k in range(6)]
    assert first.starts.tolist() == [0, 4, 8, 12, 16, 20, 24] and first.class_names[-1] == "23"
    (cache,) = runs.glob("pipe-index-*.json")
    monkeypatch.setattr(pipe_shards, "index_commands", lambda *a: pytest.fail("re-indexed"))
    again = index_pipe(spec, runs)
    assert [a.tolist() for a in again.labels] == [a.tolist() for a in first.labels]
    monkeypatch.undo()
    payload = json.loads(cache.read_text())
    payload["labels"][0][0] = -1   # not what an index holds: ignored, indexed again
    cache.write_text(json.dumps(payload))
    assert index_pipe(spec, runs).labels[0].tolist() == [0, 1, 2, 3]
    # A shard that changes behind its command is found out while it is streamed.
    (folder / "train-2.tar").write_bytes((folder / "train-3.tar").read_bytes())
    split = PipeSplit(first, first.rows([2]), torch.arange(8, 12), (3, 8, 8), Recipe(), 0, 0)
    assert "changed since it was indexed" in error_of(list, split.batches([torch.arange(4)]))


def test_index_errors_stop_every_stream(six, tmp_path):
    folder, _ = six
    # `false` fails while three commands that never end are being read: they are killed.
    commands = ["false"] + [f"sh -c 'cat {folder}/train-{k}.tar; sleep 60'" for k in range(4)]
    started = time.monotonic()
    assert "exited with status 1" in error_of(pipe_shards.index_commands, commands, range(5))
    assert time.monotonic() - started < 30


# --- epochs: ranks, workers, shuffle --------------------------------------------------------------


def stream_labels(split, epoch: int, rank: int, world: int, workers: int = 2) -> list[int]:
    dataset = _StreamedSamples(split, epoch, 0, rank, world)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                         multiprocessing_context="fork")
    return [int(y) for _, y in loader]


def test_two_ranks_of_two_workers_read_every_sample_once(six):
    _, spec = six
    _, split = whole_split(spec)
    epoch1 = [stream_labels(split, 1, rank, 2) for rank in (0, 1)]
    assert sorted(epoch1[0] + epoch1[1]) == list(range(24))
    assert len(epoch1[0]) == len(epoch1[1]) == 12   # three whole shards each
    assert [stream_labels(split, 1, rank, 2) for rank in (0, 1)] == epoch1   # seeded
    epoch2 = [stream_labels(split, 2, rank, 2) for rank in (0, 1)]
    assert epoch2 != epoch1 and sorted(epoch2[0] + epoch2[1]) == list(range(24))


def test_share_deals_shards_to_ranks_then_workers():
    order = pipe_shards.shard_order(range(10), seed=0, epoch=4, round_=0)
    assert sorted(order) == list(range(10))
    parts = [pipe_shards.share(order, r, 2, i, 3) for r in range(2) for i in range(3)]
    assert sorted(j for p in parts for j in p) == list(range(10))
    assert [len(p) for p in parts] == [2, 2, 1, 2, 2, 1]
    # fewer shards than ranks × workers: every rank still gets one
    assert all(pipe_shards.share([7, 8], r, 2, 0, 4) for r in (0, 1))


def test_shuffle_buffer_keeps_every_item():
    import random

    out = list(pipe_shards.shuffled(range(50), 8, random.Random(1)))
    assert sorted(out) == list(range(50)) and out != list(range(50))
    # an item leaves at most `size` places before its turn... and never before it came in
    assert all(out.index(i) >= i - 8 for i in range(50))


def test_an_epoch_has_the_sizes_asked_for(six):
    _, spec = six
    _, split = whole_split(spec, workers=2)
    sizes = [5, 5, 5, 5, 4]
    batches = list(split.batches([torch.zeros(n, dtype=torch.int64) for n in sizes], epoch=0,
                                 train=True))
    assert [len(y) for _, y in batches] == sizes
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(24))   # once each
    # More than the shards hold: a second pass, reshuffled, fills the rest.
    more = torch.cat([y for _, y in split.batches([torch.zeros(10, dtype=torch.int64)] * 3,
                                                   epoch=0, train=True)]).tolist()
    assert len(more) == 30 and sorted(set(more)) == list(range(24))


def test_an_epoch_stopped_early_leaves_no_process(six, tmp_path, monkeypatch):
    folder, spec = six
    # Indexed through cat; streamed through commands that write their shard, then linger:
    # an epoch that stops after one batch must kill every one of them, sleep included.
    monkeypatch.setattr(pipe_shards, "SHUFFLE_BUFFER", 1)   # a batch before a shard's end
    index, split = whole_split(spec, workers=2)
    pids = tmp_path / "pids"
    index.commands = [f"sh -c 'echo $$ >> {pids}; cat {folder}/train-{k}.tar; sleep 60'"
                      for k in range(6)]
    loader = split.batches([torch.zeros(2, dtype=torch.int64)] * 12, epoch=0, train=True)
    next(loader)
    # Each of the 2 workers starts a command as it begins its shards; on a loaded machine
    # the second may begin after the first batch is back: wait for it (the test needs two).
    deadline = time.monotonic() + 30
    while len(pids.read_text().split()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    loader.close()
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) >= 2 and none_left(started)


def test_a_command_failing_in_a_worker_is_one_line(six):
    _, spec = six
    index, split = whole_split(spec, workers=2)
    index.commands[4] = "sh -c 'echo access denied >&2; exit 5'"
    message = error_of(list, split.batches([torch.zeros(4, dtype=torch.int64)] * 6, train=True))
    assert message == "'pipe:sh -c 'echo access denied >&2; exit 5'' exited with status 5: access denied"
    split.skip_bad = True   # a failed command is never skipped as a bad image is
    assert "exited with status 5" in error_of(list, split.batches([torch.zeros(4, dtype=torch.int64)] * 6,
                                                                   train=True))


def test_cache_ram_holds_the_samples_read_in_order(six):
    _, spec = six
    ram = load_data(f"wds:{spec}", (3, 12, 12), cache="ram")
    streamed = load_data(f"wds:{spec}", (3, 12, 12), cache="stream")
    assert "decoded into memory" in ram.how and torch.equal(ram.train.y, streamed.train.y)
    assert torch.equal(ram.train_x, streamed.train_x) and torch.equal(ram.test_x, streamed.test_x)


def test_streamed_samples_are_decoded_as_random_access_decodes_them(six):
    folder, spec = six
    _, split = whole_split(spec, workers=1, recipe=CROP)
    local = index_shards(f"{folder}/train-{{0..5}}.tar")
    rows, labels = local.splits["train"]
    random_access = ShardSplit(local.table, list(rows), torch.as_tensor(labels), (3, 12, 12), CROP,
                               seed=3, workers=0)
    # Training: whatever order the stream picks, sample n is cropped as row n is.
    (x, y), = split.batches([torch.zeros(24, dtype=torch.int64)], epoch=2, train=True)
    (xr, yr), = random_access.batches([y], epoch=2, train=True)
    assert torch.equal(x, xr) and torch.equal(y, yr)
    # Anything else: exactly the samples asked for, in order.
    asked = [torch.tensor([1, 2, 9]), torch.tensor([10, 23])]
    got = list(split.batches(asked, epoch=1))
    expected = list(random_access.batches(asked, epoch=1))
    for (xa, ya), (xb, yb) in zip(got, expected):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert "increasing order" in error_of(split.batches, [torch.tensor([3, 1])])


def test_a_bad_image_is_one_line_or_skipped(tmp_path):
    with tarfile.open(tmp_path / "train-0.tar", "w") as tar:
        add(tar, "good.png", image_bytes(1))
        add(tar, "good.cls", b"0")
        add(tar, "broken.jpg", b"not a jpeg")
        add(tar, "broken.cls", b"1")
    spec = f"pipe:cat {tmp_path}/train-0.tar"
    _, split = whole_split(spec, workers=1)
    message = error_of(list, split.batches([torch.zeros(2, dtype=torch.int64)], train=True))
    assert f"pipe:cat {tmp_path}/train-0.tar:broken.jpg" in message
    split.skip_bad = True
    (x, y), = split.batches([torch.arange(2)])
    assert len(x) == 2 and "broken.jpg" in next(iter(split.skipped))


# --- where a command may come from ---------------------------------------------------------------


def test_only_the_data_flag_may_name_a_command(tmp_path, capsys):
    from cnndsl import load
    from cnndsl.training.settings import make_config

    marker = tmp_path / "ran"
    command = f"wds:pipe:touch {marker}"
    spec = tiny_spec(tmp_path, train=f"  epochs: 1\n  data: '{command}'\n")
    with pytest.raises(CnnDslError) as e:
        make_config(load(spec))
    assert "a pipe: data source runs a command, so it must be given with --data on the command " \
           "line" in e.value.message and "the spec's train: data:" in e.value.message
    with pytest.raises(CnnDslError) as e:
        make_config(None, {}, base={"data": " WDS: " + command[4:]})
    assert "the checkpoint's stored config" in e.value.message
    assert make_config(load(spec), {"data": command}).data == command   # the user's own flag
    status, _, err = run_main(capsys, "train", spec, "--out", tmp_path / "run")
    assert status != 0 and "must be given with --data" in err and not marker.exists()


# --- cnndsl train end to end --------------------------------------------------------------------


def test_train_resume_and_eval_from_a_pipe(tmp_path, capsys, monkeypatch):
    pattern = write_shards(tmp_path / "set", shards_=10, per_shard=6, classes=3)
    data = f"wds:pipe:gzip -dc {pattern}.gz"
    spec = tiny_spec(tmp_path, train="  batch_size: 8\n  optimizer: {name: adam, lr: 3.0e-3}\n")
    common = ["--data", data, "--workers", "1", "--cache", "stream"]

    def train(out, *flags):
        status, stdout, err = run_main(capsys, "train", spec, "--out", tmp_path / out, *flags)
        assert status == 0, err
        lines = (tmp_path / out / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if "loss" in k or "acc" in k}
                for line in lines], stdout

    straight, log = train("a", "--epochs", "2", *common)
    # 10 shards: 2 test, round(0.1·8) = 1 validates, 7 train (42 samples)
    assert "42 train / 6 val / 12 test" in log and "60 images in 10 pipe: shards" in log
    assert "streamed from their commands" in log and list((tmp_path / "a").glob("pipe-index-*.json"))
    # The same run, interrupted (Ctrl-C) right after epoch 1 is written ...
    from cnndsl.training import loop
    end_epoch = loop._end_epoch

    def interrupted(run, metrics):
        end_epoch(run, metrics)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_end_epoch", interrupted)
    status, _, _ = run_main(capsys, "train", spec, "--out", tmp_path / "b", "--epochs", "2", *common)
    assert status == 130
    monkeypatch.setattr(loop, "_end_epoch", end_epoch)
    # ... is resumed only with the command given again, then gives the same numbers.
    status, _, err = run_main(capsys, "train", spec, "--out", tmp_path / "b", "--resume",
                              "--epochs", "2", "--workers", "1")
    assert status == 2 and "the checkpoint's stored config" in err and "--data" in err
    resumed, log = train("b", "--resume", "--epochs", "2", *common)
    assert "resuming after epoch 1" in log and resumed == straight
    # eval reads the checkpoint's data only when the command is given again
    status, _, err = run_main(capsys, "eval", tmp_path / "a" / "last.pt")
    assert status == 2 and "must be given with --data" in err
    status, out, err = run_main(capsys, "eval", tmp_path / "a" / "last.pt", "--data", data, "--json")
    assert status == 0, err
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert json.loads(out)["images"] == 12 and json.loads(out)["top1"] == summary["test_acc"]


def test_ddp_ranks_index_and_stream_their_own_shards(tmp_path):
    # torchrun, gloo, 2 processes with a worker each. Every command logs its shard when it
    # starts: the index pass runs each exactly once across the two ranks (the ranks share
    # the work), and the run trains.
    write_shards(tmp_path / "set", shards_=10, per_shard=6, classes=3)
    log = tmp_path / "started"
    data = f"wds:pipe:sh -c 'echo $0 >> {log}; exec cat {tmp_path}/set/train-$0.tar' {{0..9}}"
    spec = tiny_spec(tmp_path, train="  batch_size: 8\n  optimizer: {name: adam, lr: 3.0e-3}\n")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "cnndsl", "train", str(spec), "--data", data, "--epochs", "1", "--workers", "1",
         "--cache", "stream", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "cpu ×2 (DDP)" in run.stdout and "42 train / 6 val / 12 test" in run.stdout
    cached = json.loads(next((tmp_path / "run").glob("pipe-index-*.json")).read_text())
    assert [len(labels) for labels in cached["labels"]] == [6] * 10
    started = log.read_text().split()
    assert sorted(started[:10]) == sorted(str(k) for k in range(10))   # the index pass: once each
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text())["epoch"] == 1


# --- hostile streams, under a memory limit ---------------------------------------------------------

MARGIN = 2 ** 30   # as test_hostile_files.py: beyond what `import torch, cnndsl` maps
PRELUDE = memory_limit_prelude(MARGIN) + """\
from cnndsl.errors import CnnDslError
from cnndsl.training.data import load_data
try:
    data = load_data(sys.argv[1], (3, 12, 12), val_fraction=0.0, cache="stream", workers=0)
    x, _ = next(data.train.batches([torch.arange(len(data.train))]))   # the images, read again
    print("loaded", len(data.train), len(data.test), tuple(x.shape))
except CnnDslError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
"""


def limited(source: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    return subprocess.run([sys.executable, "-c", PRELUDE, source], capture_output=True, text=True,
                          env=env, timeout=180)


def gzip_of_zeros_after(path: Path, head: bytes, zeros: int, tail: bytes = b"") -> None:
    """`head`, `zeros` zero bytes, `tail`, as gzip members (~1 KB per MiB of zeros);
    `gzip -dc` joins them into one stream."""
    member = gzip.compress(bytes(MiB), compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(head))
        for _ in range(zeros // MiB):
            f.write(member)
        f.write(gzip.compress(tail))


def header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(tarfile.GNU_FORMAT)


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr, r.stderr[-2000:]
    assert r.returncode == 2 and r.stderr.count("\n") == 1, (r.returncode, r.stderr[-2000:])
    for w in words:
        assert w in r.stderr, r.stderr


def test_a_member_claiming_gigabytes_is_refused_from_its_header(tmp_path):
    gzip_of_zeros_after(tmp_path / "bomb.tar.gz", header("big.jpg", 4_400_000_000), 64 * MiB)
    r = limited(f"wds:pipe:gzip -dc {tmp_path}/bomb.tar.gz")
    one_line_error(r, "'pipe:gzip -dc", "sample 'big' has a 4.1 GiB image, more than the 64.0 MiB")


def test_a_pax_header_claiming_gigabytes_is_refused_before_it_is_read(tmp_path):
    gzip_of_zeros_after(tmp_path / "pax.tar.gz", header("pax", 2_000_000_000, tarfile.XHDTYPE),
                        64 * MiB)
    r = limited(f"wds:pipe:gzip -dc {tmp_path}/pax.tar.gz")
    one_line_error(r, "has a tar header of 1.9 GiB, more than 1.0 MiB")


def member(name: str, data: bytes) -> bytes:
    """One tar member: its header, its data, padded to a block."""
    return header(name, len(data)) + data + bytes(-len(data) % 512)


def test_a_2_gib_member_that_is_no_sample_streams_past_in_bounded_memory(tmp_path):
    # 2 GiB of metadata (more than the memory limit) between two samples: skipped, never held.
    size = 2 * 1024 * MiB
    (tmp_path / "head.tar").write_bytes(member("a.png", image_bytes(1)) + member("a.cls", b"0")
                                        + header("blob.json", size))
    (tmp_path / "tail.tar").write_bytes(member("b.png", image_bytes(2)) + member("b.cls", b"1")
                                        + bytes(1024))
    r = limited(f"wds:pipe:sh -c 'cat {tmp_path}/head.tar; head -c {size} /dev/zero; "
                f"cat {tmp_path}/tail.tar'")
    assert r.returncode == 0 and "loaded 2 0 (2, 3, 12, 12)" in r.stdout, r.stderr[-2000:]
