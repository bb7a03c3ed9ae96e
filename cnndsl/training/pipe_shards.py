"""WebDataset tar shards streamed from commands: `--data wds:pipe:COMMAND`.

Multi-node ImageNet training streams its shards from a store, one command per shard:

    --data 'wds:pipe:curl -s https://host/in1k/train-{000000..000146}.tar'
    --data 'wds:pipe:aws s3 cp s3://bucket/train-{0..9}.tar -'
    --data 'wds:pipe:gzip -dc /data/train-{0..9}.tar.gz'

The text after `pipe:` is brace-expanded as a local shard pattern is (`shards.expand_braces`)
into one command per shard. Each command is split into words as a shell would split them
(`shlex.split`: quotes and backslashes work) and run as a program, never through a shell:
no pipes (`|`), redirections, variables or globs (`sh -c '…'` runs a shell explicitly).
What it writes on stdout is read as one tar archive, plain or gzip-, bzip2- or
xz-compressed (`tarfile`, streaming mode), with the sample rules of local shards
(`shards.SampleGroups`: key, image, label, size limits, the same messages, naming the
shard `pipe:COMMAND`). This module is the byte side and imports neither torch nor numpy
at import (`settings.make_config` imports it for its check); `shards.PipeSplit` makes the
batches.

The `webdataset` package is not used: it runs `pipe:` commands through a shell
(`shell=True`), reads every member whole whatever size its header claims, and has no
timeout on a read.

Roles. A command's shard name is the file name of its last argument that contains `.tar`;
a name holding the word `test`, or `val`/`valid`/`validation`, or `train` (between `-`, `_`,
`.` or the ends: `imagenet1k-validation-00.tar`) gives the shard that role, any other name
trains. As in a folder of shards: test shards test; without them val shards test; val
shards next to test shards validate. What is missing is held out by whole shards, seeded:
20% of the training shards test, then `val_fraction` of the rest validate (at least one
shard of two or more; a stream cannot skip a sample without reading it, so a holdout by
samples would cost a full read of the training shards at every validation). `--limit N`
then keeps the first N training samples.

The index. Before training every shard is read once, its images skipped, not decoded
(`INDEX_STREAMS` commands at a time), for its sample count and labels: the epoch length,
the class count (class names are the indices) and the split sizes come from it, so no
sample count has to be given. It is cached in the run folder (`pipe-index-*.json`, keyed
by the commands' text; `--resume` reuses it); under DDP the ranks index a share each and
exchange them. A command gives no size or date to check, so the cache is trusted until a
stream disagrees with it: a shard whose samples or labels differ from the index stops the
run (delete the cache file to index again).

Epochs. A training epoch is a stream, not a permutation. The shards holding the training
samples are shuffled with (seed, epoch) and dealt out to the DDP ranks first (rank r of w
takes every w-th), then to each rank's DataLoader workers (worker i of n every n-th of
those: `share`); each worker streams its shards one after another through a shuffle buffer
of `SHUFFLE_BUFFER` samples seeded from (seed, epoch, rank, worker). The loop asks each
rank for its share of every batch. With one process an epoch sees every training sample
once (less the loop's dropped last batch, when it would hold under 2 samples). Under DDP
each rank takes its N/w samples from its own shards: a rank whose shards hold fewer starts
another pass over them (reshuffled), one whose shards hold more leaves the rest, so with
shards of unequal sizes some samples are seen twice or not at all in an epoch (shards of
one size, as many as a multiple of the ranks, avoid it). A sample's crop is seeded from
(seed, epoch, its index in the split), as for local shards.

Resume. The order of an epoch is a function of (seed, epoch, the number of processes,
`--workers`), so a run resumed with the same ones repeats the uninterrupted run exactly
(bit for bit on CPU; the tests check it): checkpoints are written at epoch ends, and an
interrupted epoch is redone from its start, its streams restarted from their first
shard. Not exact: a resume with another `--workers` or world size streams the later
epochs in another order (the same samples, with the same crops); nothing resumes in the
middle of an epoch. Validation, test, the channel statistics and `--cache ram` read
exactly the samples they ask for, in order, in the training process (the workers decode).

Processes. A command runs in a session of its own and is killed (SIGKILL to its whole
process group) and reaped whenever its reader stops: at the end of its archive, on an
error, when an epoch or a run ends early (a worker's reader is told to stop before the
DataLoader is shut down), on Ctrl-C (which the session does not pass on). If the reading
process is itself killed, a command still writing dies of SIGPIPE. A program that is not
found, one that exits with a status other than 0 (the message quotes the last line of its
stderr) or is killed by a signal, one that writes nothing on stdout for `PIPE_TIMEOUT`
seconds, or anything but zero padding after a plain archive (more than `MAX_TRAILER`
bytes after a compressed one), is a one-line error naming the command. A stream holds at most one member in memory, bounded as on disk
(`MAX_HEADER_BYTES`, `MAX_IMAGE_BYTES`, `MAX_LABEL_BYTES`); old-style GNU sparse members
are refused outright.

Security. A pipe: source runs a program, so it is only ever taken from the user's own
`--data` flag: a spec's `train: data:` or a checkpoint's stored config naming one is
refused (`refuse_command_source`, called by `settings.make_config`, the one place that
knows where the value came from), and so `--resume` and `cnndsl eval` need the `--data`
flag given again.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import selectors
import shlex
import signal
import subprocess
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import errors
from ..errors import CnnDslError
from . import limits

# Imported where used, not here: numpy, and shards.py (the sample rules and limits both
# readers share), which imports torch. settings.py imports this module for its check, which
# must work in the analysis-only install (neither numpy nor torch).
if TYPE_CHECKING:
    import numpy as np

PIPE = "pipe:"
PIPE_TIMEOUT = 600.0          # seconds a command may write nothing on stdout before it is stopped
SHUFFLE_BUFFER = 1000         # samples each stream's shuffle buffer holds (encoded: ~110 MB of ImageNet)
INDEX_STREAMS = 4             # commands read at once by the index pass
STREAM_BUFSIZE = 256 * 1024   # bytes tarfile asks of a stream at a time
MAX_TRAILER = 16 * limits.MiB   # bytes a command may write after its archive's end (padding)
STDERR_TAIL = 4096            # bytes of a command's stderr kept, for its last line
CACHE_VERSION = 1
MAX_SHOWN = 160               # characters of a command quoted in a message
STOP_POLL = 0.5               # seconds between looks at a reader's stop event while it waits
ROLE_WORDS = {"train": "train", "training": "train", "test": "test", "val": "val",
              "valid": "val", "validation": "val"}
# GNU long names and pax headers, which tarfile reads whole whatever size they claim.
_EXTENDED = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
             tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)


# --- where a command may come from --------------------------------------------------------


def runs_command(source) -> bool:
    """Whether a `--data` value runs a command: `wds:pipe:…`, read as `data.load_data` reads
    a source (the kind in any case, spaces around it). The one test, for dispatch and guard.

    >>> runs_command("wds:pipe:cat x.tar"), runs_command(" WDS : pipe:cat x.tar")
    (True, True)
    >>> runs_command("wds:/data/pipe:x.tar"), runs_command("folder:pipe:x"), runs_command(3)
    (False, False, False)
    """
    if not isinstance(source, str):
        return False
    kind, _, arg = source.strip().partition(":")
    return kind.strip().lower() == "wds" and arg.strip().startswith(PIPE)


def refuse_command_source(source, origin: str, span=None) -> None:
    """Refuse a data source that runs a command unless it came from the user's own `--data`
    flag: `origin` says where it came from instead ("the spec's train: data:", "the
    checkpoint's stored config"), `span` where it is written in a spec."""
    if runs_command(source):
        raise CnnDslError(f"{origin} names '{printable(source)}': a pipe: data source runs a "
                          "command, so it must be given with --data on the command line", span)


def printable(text: str, limit: int = limits.MAX_TEXT) -> str:
    """A name from a hostile file or command, safe to print on one line (no surrogates, no
    controls), clipped to `limit` characters."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return limits.clip("".join(ch if ch.isprintable() else "?" for ch in text[:max(200, limit)]),
                       limit)


# --- the commands of a spec -----------------------------------------------------------------


def pipe_commands(spec: str) -> list[str]:
    """The commands `pipe:TEXT` stands for: TEXT brace-expanded, each one checked to split
    into words."""
    from .shards import expand_braces

    text = spec.strip()
    if not text.startswith(PIPE):
        raise CnnDslError(f"wds:{printable(spec)}: not a pipe: command")
    commands = [c.strip() for c in expand_braces(text[len(PIPE):])]
    seen = set()
    for command in commands:
        argv_of(command)
        if command in seen:
            raise CnnDslError(f"'{shown(command)}': the pattern names this command twice")
        seen.add(command)
    return commands


def argv_of(command: str) -> list[str]:
    """A command's words, split as a shell would split them (nothing else of a shell)."""
    try:
        argv = shlex.split(command)
    except ValueError as e:   # an unclosed quote, a trailing backslash
        raise CnnDslError(f"'{shown(command)}': cannot split it into words: {e}") from None
    if not argv:
        raise CnnDslError("wds:pipe: needs a command after 'pipe:' (e.g. 'wds:pipe:cat "
                          "/data/train-{0..9}.tar')")
    return argv


def shard_role(command: str) -> str | None:
    """The role the command's shard name gives it (see the module doc), or None.

    >>> shard_role("curl -s https://h/imagenet1k-validation-03.tar"), shard_role("cat test-1.tar")
    ('val', 'test')
    >>> shard_role("aws s3 cp s3://b/shard-7.tar -") is None, shard_role("cat x-val.tar.gz")
    (True, 'val')
    """
    for word in reversed(argv_of(command)):
        name = word.rstrip("/").rsplit("/", 1)[-1].lower()
        if ".tar" in name:
            roles = {ROLE_WORDS[w] for w in re.split(r"[-_.]", name) if w in ROLE_WORDS}
            return roles.pop() if len(roles) == 1 else None
    return None


def shown(command: str) -> str:
    """A command as messages name it: `pipe:COMMAND`, printable, clipped in the middle
    (its end names the shard)."""
    text = PIPE + command
    return errors.clip(printable(text, len(text)), MAX_SHOWN, keep_end=True)


# --- one command ----------------------------------------------------------------------------


class Stopped(Exception):
    """A reader's stop event was set (its epoch ended early): not an error."""


class Command:
    """A running command whose stdout is read like a file (`read`), with a timeout per
    read; its stderr is drained meanwhile (a full stderr pipe would stall it), keeping the
    last `STDERR_TAIL` bytes. `close` kills its process group and reaps it; use `with`.
    While it waits, `read` looks at `stop` (an Event) and raises `Stopped` once it is set."""

    def __init__(self, command: str, stop=None) -> None:
        self.command, self.stop = command, stop
        argv = argv_of(command)
        try:
            # No shell; a session of its own, so that close() can kill all it started.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, bufsize=0, close_fds=True,
                                         start_new_session=True)
        except FileNotFoundError:
            raise CnnDslError(f"'{shown(command)}': program '{printable(argv[0])}' not found") from None
        except OSError as e:
            raise CnnDslError(f"'{shown(command)}': cannot run '{printable(argv[0])}': "
                              f"{e.strerror or type(e).__name__}") from None
        self.out, self.err = self.proc.stdout.fileno(), self.proc.stderr.fileno()
        _widen_pipe(self.out)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.out, selectors.EVENT_READ)
        self.selector.register(self.err, selectors.EVENT_READ)
        self.err_selector = selectors.DefaultSelector()   # stderr alone, to wait for the exit
        self.err_selector.register(self.err, selectors.EVENT_READ)
        self.tail = b""
        self.eof = self.closed = self.err_done = False

    def __enter__(self) -> "Command":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes of stdout, as soon as there are some: at least min(n, 512) (tarfile
        tells gzip from tar by a first read of 512), fewer only at its end. It waits at most
        PIPE_TIMEOUT seconds without a byte."""
        if n is None or n < 0:
            n = STREAM_BUFSIZE
        least = min(n, tarfile.BLOCKSIZE)
        pieces, got = [], 0
        deadline = time.monotonic() + PIPE_TIMEOUT
        while got < least and not self.eof:
            if self.stop is not None and self.stop.is_set():
                raise Stopped()
            left = deadline - time.monotonic()
            if left <= 0:
                raise CnnDslError(f"'{shown(self.command)}' wrote nothing for {PIPE_TIMEOUT:g} s "
                                  "(pipe_shards.PIPE_TIMEOUT); stopped it")
            events = self.selector.select(min(left, STOP_POLL))
            for key, _ in events:
                if key.fd == self.err:
                    self._drain_stderr()
                    continue
                piece = os.read(self.out, min(n - got, 1 << 20))
                if not piece:
                    self.eof = True
                    self.selector.unregister(self.out)
                    break
                pieces.append(piece)
                got += len(piece)
                deadline = time.monotonic() + PIPE_TIMEOUT
        return b"".join(pieces)

    def finish(self) -> None:
        """After the archive's end: the rest of stdout (a tar's padding, at most
        MAX_TRAILER bytes), then the exit status, which must be 0."""
        left = MAX_TRAILER
        while piece := self.read(min(left + 1, 1 << 20)):
            left -= len(piece)
            if left < 0:
                raise CnnDslError(f"'{shown(self.command)}' writes more than "
                                  f"{limits.human_bytes(MAX_TRAILER)} after the end of its tar "
                                  "archive (cnndsl reads one archive per command)")
        status = self._exit_status(PIPE_TIMEOUT)
        if status is None:
            raise CnnDslError(f"'{shown(self.command)}' closed its output but did not exit "
                              f"within {PIPE_TIMEOUT:g} s (pipe_shards.PIPE_TIMEOUT)")
        if status != 0:
            raise self.status_error(status)

    def failure(self) -> CnnDslError | None:
        """Why the command failed, if it did: called when its output could not be read, so
        that `false` says it exited with status 1 rather than that nothing is not a tar."""
        status = self._exit_status(1.0 if self.eof else 0.0)
        return self.status_error(status) if status not in (None, 0) else None

    def status_error(self, status: int) -> CnnDslError:
        if status < 0:
            try:
                how = f"was killed by signal {signal.Signals(-status).name}"
            except ValueError:
                how = f"was killed by signal {-status}"
        else:
            how = f"exited with status {status}"
        line = self._stderr_line()
        return CnnDslError(f"'{shown(self.command)}' {how}" + (f": {line}" if line else ""))

    def kill(self) -> None:
        """Kill the command's process group (safe from another thread; close() reaps)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass   # gone already

    def close(self) -> None:
        """Kill whatever the command started that still runs, and reap it. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.kill()
        try:
            self.proc.wait(timeout=60)   # after SIGKILL: at once, unless stuck in the kernel
        except subprocess.TimeoutExpired:
            pass
        self.selector.close()
        self.err_selector.close()
        self.proc.stdout.close()
        self.proc.stderr.close()

    def _exit_status(self, timeout: float) -> int | None:
        """The exit status, waiting up to `timeout` s (draining stderr); None if it runs on."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._drain_stderr(wait=min(left, 0.05))
        self._drain_stderr()
        return self.proc.returncode

    def _drain_stderr(self, wait: float = 0.0) -> None:
        """Read what stderr has, waiting up to `wait` seconds for it."""
        if self.err_done:
            time.sleep(wait)
            return
        if not self.err_selector.select(wait):
            return
        piece = os.read(self.err, 1 << 16)
        if not piece:
            self.err_done = True
            self.selector.unregister(self.err)
            self.err_selector.unregister(self.err)
        self.tail = (self.tail + piece)[-STDERR_TAIL:]

    def _stderr_line(self) -> str:
        lines = [ln.strip() for ln in self.tail.decode("utf-8", "replace").splitlines()]
        lines = [ln for ln in lines if ln]
        return printable(lines[-1]) if lines else ""


def _widen_pipe(fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: fewer wake-ups for a fast command (Linux only)."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):
        pass


# --- one shard, streamed ---------------------------------------------------------------------


class Refused(Exception):
    """A tar header refused before tarfile reads what it announces."""


class TarHeader(tarfile.TarInfo):
    """tarfile's header reading, with the checks a hostile shard needs (both readers use
    it): an extended header (pax, GNU long name) over MAX_HEADER_BYTES and old GNU sparse
    members (an unbounded chain of extension blocks, each adding to a list) are refused
    before they are read, and the end-of-archive block is noted on the TarFile (tarfile
    stops quietly at a truncated or garbled header, too)."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            tar.cnndsl_ended = True
            raise

    def _proc_member(self, tar):
        from .shards import MAX_HEADER_BYTES

        if self.type == tarfile.GNUTYPE_SPARSE:
            raise Refused("has an old-style GNU sparse member (not a WebDataset shard)")
        if self.type in _EXTENDED and self.size > MAX_HEADER_BYTES:
            raise Refused(f"has a tar header of {limits.human_bytes(self.size)}, more than "
                           f"{limits.human_bytes(MAX_HEADER_BYTES)} (damaged?)")
        return super()._proc_member(tar)


def _stream_errors() -> tuple:
    import lzma
    import zlib

    from .shards import _TAR_ERRORS

    # RecursionError: tarfile reads a chain of pax headers recursively.
    return _TAR_ERRORS + (zlib.error, lzma.LZMAError, EOFError, RecursionError)


class ShardStream:
    """The samples of one shard's command, in archive order (`shards.Sample`), the images'
    bytes kept where `keep(k)` asks for them (k: the sample's number in the shard).
    Iterating runs the command; `close` (or dropping the iterator) stops and reaps it."""

    def __init__(self, command: str, keep=lambda k: False, stop=None) -> None:
        self.command, self.keep, self.stop = command, keep, stop
        self.pipe: Command | None = None
        self.killed = False

    def __iter__(self):
        with Command(self.command, self.stop) as pipe:
            self.pipe = pipe
            if self.killed:
                pipe.kill()
            try:
                yield from self._samples(pipe)
            except CnnDslError as e:
                raise (pipe.failure() or e) from None

    def _samples(self, pipe: Command):
        from .shards import MAX_SAMPLES, SampleGroups, _pillow_reads_webp

        broken = _stream_errors()
        tar = self._open(pipe, broken)
        group = SampleGroups(shown(self.command), MAX_SAMPLES, _pillow_reads_webp(),
                             read=lambda ti: self._member(tar, ti, broken), keep=self.keep)
        for ti in self._members(tar, broken):
            if (done := group.add(ti)) is not None:
                yield done
        if not getattr(tar, "cnndsl_ended", False):
            raise CnnDslError(f"'{shown(self.command)}' is truncated or damaged after "
                              f"{tar.offset:,} bytes of tar (no end-of-archive block)")
        last = group.flush()
        self._check_padding(tar, broken)
        pipe.finish()   # before the last sample: a failed command never looks complete
        if last is not None:
            yield last

    def _open(self, pipe: Command, broken: tuple) -> tarfile.TarFile:
        try:
            return tarfile.open(fileobj=pipe, mode="r|*", bufsize=STREAM_BUFSIZE, tarinfo=TarHeader)
        except Refused as e:
            raise CnnDslError(f"'{shown(self.command)}' {e}") from None
        except broken as e:
            raise CnnDslError(f"'{shown(self.command)}' did not write a tar archive "
                              f"(plain, gzip, bzip2 or xz): {_reason(e)}") from None

    def _members(self, tar: tarfile.TarFile, broken: tuple):
        while True:
            try:
                ti = tar.next()
            except Refused as e:
                raise CnnDslError(f"'{shown(self.command)}' {e}") from None
            except broken as e:
                raise CnnDslError(f"'{shown(self.command)}' is truncated or damaged: "
                                  f"{_reason(e)}") from None
            if ti is None:
                return
            tar.members.clear()   # tarfile keeps every TarInfo: a big shard would pile them up
            yield ti

    def _check_padding(self, tar: tarfile.TarFile, broken: tuple) -> None:
        """After a plain archive's end only zeros may follow (its record's padding): a second
        archive would otherwise be dropped unsaid. (After a compressed one, the bytes left
        are compressed: `Command.finish` only bounds them.)"""
        if tar.fileobj.comptype != "tar":
            return
        left = MAX_TRAILER
        try:
            while rest := tar.fileobj.read(min(left + 1, 1 << 20)):
                left -= len(rest)
                if left < 0 or rest.count(0) != len(rest):
                    raise CnnDslError(f"'{shown(self.command)}' writes data after the end of its "
                                      "tar archive (a second archive? cnndsl reads one per command)")
        except broken as e:
            raise CnnDslError(f"'{shown(self.command)}' is damaged after its archive: "
                              f"{_reason(e)}") from None

    def _member(self, tar: tarfile.TarFile, ti: tarfile.TarInfo, broken: tuple) -> bytes:
        """The current member's bytes (its size was checked against its limit first)."""
        try:
            data = tar.fileobj.read(ti.size)
        except broken as e:
            raise CnnDslError(f"'{shown(self.command)}' is truncated or damaged: {_reason(e)}") from None
        if len(data) != ti.size:
            raise CnnDslError(f"'{shown(self.command)}' is truncated: member "
                              f"'{printable(ti.name)}' ends after {len(data):,} of its "
                              f"{ti.size:,} bytes")
        return data

    def close(self) -> None:
        if self.pipe is not None:
            self.pipe.close()

    def kill(self) -> None:
        """Stop the command from another thread (its reader then sees the end of it)."""
        self.killed = True
        if self.pipe is not None:
            self.pipe.kill()


def _reason(e: BaseException) -> str:
    """The first line of what tarfile or a decompressor said, safe to print."""
    lines = str(e).strip().splitlines()
    return printable(lines[0] if lines else type(e).__name__, 160)


# --- the index ---------------------------------------------------------------------------------


@dataclass
class PipeIndex:
    """The shards of a pipe: spec: each command, its role, its samples' labels; rows are
    numbered shard after shard in the pattern's order (shard j's are starts[j]..starts[j+1])."""

    commands: list[str]
    roles: list[str | None]
    labels: list[np.ndarray]   # int64 per shard
    starts: np.ndarray         # int64, len(commands) + 1
    how: str = ""              # for the run's log: indexed now (how long), or from the cache

    @property
    def class_names(self) -> list[str]:
        top = max((int(a.max()) for a in self.labels if len(a)), default=0)
        return [str(i) for i in range(top + 1)]

    def rows(self, shards) -> np.ndarray:
        """The rows of these shards, in order."""
        import numpy as np

        parts = [np.arange(self.starts[j], self.starts[j + 1]) for j in sorted(shards)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def shard_of(self, rows: np.ndarray) -> np.ndarray:
        import numpy as np

        return np.searchsorted(self.starts, rows, side="right") - 1


def index_pipe(spec: str, cache_dir: str | Path | None = None) -> PipeIndex:
    """Every shard of `pipe:…` counted and its labels read, once: from the cache in
    `cache_dir` when it holds these very commands, else by streaming them (shared among
    DDP ranks when there are several)."""
    import numpy as np

    from .shards import MAX_SAMPLES, MAX_SHARDS

    commands = pipe_commands(spec)
    if len(commands) > MAX_SHARDS:
        raise CnnDslError(f"wds:{printable(spec)}: more than {MAX_SHARDS:,} shards")
    roles = [shard_role(c) for c in commands]
    cache_file = None if cache_dir is None else _cache_file(Path(cache_dir), commands)
    started = time.monotonic()
    labels, cached = _labels_everywhere(commands, cache_file)
    how = ("index from the cache" if cached else
           f"indexed in {time.monotonic() - started:.1f} s, reading each command once")
    counts = [len(a) for a in labels]
    if sum(counts) > MAX_SAMPLES:
        raise CnnDslError(f"wds:{printable(spec)}: more than {MAX_SAMPLES:,} samples in the "
                          "shards together")
    if not sum(counts):
        raise CnnDslError(f"wds:{printable(spec)}: the shards hold no samples")
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return PipeIndex(commands, roles, labels, starts, how)


def _labels_everywhere(commands: list[str], cache_file: Path | None) -> tuple[list, bool]:
    """Each shard's labels, and whether they came from the cache. Under DDP, rank 0's cache decides for all, and otherwise each
    rank streams every world-th shard and all exchange them (errors too: a rank that
    failed alone would leave the others waiting forever)."""
    rank, world = process_rank()
    cached = _load_cache(cache_file, commands) if rank == 0 and cache_file is not None else None
    if world > 1:
        cached = _broadcast(cached)
    if cached is not None:
        return cached, True
    try:
        found, failure = index_commands(commands, range(rank, len(commands), world)), None
    except CnnDslError as e:
        found, failure = {}, e.message
    parts = _all_gather((found, failure)) if world > 1 else [(found, failure)]
    failures = [f for _, f in parts if f]
    if failures:
        raise CnnDslError(failures[0])
    merged = {j: a for part, _ in parts for j, a in part.items()}
    labels = [merged[j] for j in range(len(commands))]
    if rank == 0 and cache_file is not None:
        _write_cache(cache_file, commands, labels)
    return labels, False


def index_commands(commands: list[str], which) -> dict[int, np.ndarray]:
    """The labels of shards `which`, INDEX_STREAMS commands at a time. The first error
    stops every other stream at once (its command is killed) and is raised."""
    import numpy as np

    streams = {j: ShardStream(commands[j]) for j in which}
    failed = threading.Event()

    def labels_of(j: int):
        out = []
        if not failed.is_set():
            for sample in streams[j]:
                if failed.is_set():
                    break
                out.append(sample.label)
        return np.asarray(out, dtype=np.int64)

    with ThreadPoolExecutor(INDEX_STREAMS) as pool:
        futures = [(j, pool.submit(labels_of, j)) for j in streams]
        try:
            return {j: f.result() for j, f in futures}
        except BaseException:
            failed.set()
            for stream in streams.values():
                stream.kill()
            raise


def process_rank() -> tuple[int, int]:
    """(rank, world size) of the DDP process group, (0, 1) without one."""
    import sys

    dist = sys.modules.get("torch.distributed")   # never imports torch itself
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast(value):
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_gather(value) -> list:
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _cache_file(cache_dir: Path, commands: list[str]) -> Path:
    digest = hashlib.sha256("\n".join(commands).encode("utf-8", "surrogateescape")).hexdigest()
    return cache_dir / f"pipe-index-{digest[:16]}.json"


def _load_cache(cache_file: Path, commands: list[str]) -> list[np.ndarray] | None:
    """The cached labels if the file holds exactly these commands and well-formed labels."""
    import numpy as np

    from .folder_index import _read_json   # bounded, regular files only; None if unreadable
    from .shards import MAX_CLASSES, MAX_SAMPLES

    payload = _read_json(cache_file)
    if not (isinstance(payload, dict) and payload.get("version") == CACHE_VERSION
            and payload.get("commands") == commands and isinstance(payload.get("labels"), list)
            and len(payload["labels"]) == len(commands)):
        return None
    labels, total = [], 0
    for raw in payload["labels"]:
        if not isinstance(raw, list) or not all(type(v) is int for v in raw):
            return None
        a = np.asarray(raw, dtype=np.int64) if raw else np.zeros(0, dtype=np.int64)
        total += len(a)
        if total > MAX_SAMPLES or ((a < 0) | (a >= MAX_CLASSES)).any():
            return None
        labels.append(a)
    return labels


def _write_cache(cache_file: Path, commands: list[str], labels: list[np.ndarray]) -> None:
    from .folder_index import _write_cache as write   # atomic; a failure is only a slower start

    write(cache_file, {"version": CACHE_VERSION, "commands": commands,
                       "labels": [a.tolist() for a in labels]})


# --- an epoch's streams -------------------------------------------------------------------------


def stream_seed(*parts) -> int:
    """A seed from (seed, epoch, round, …) alone: every rank and worker derives the same."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def shard_order(shards, seed: int, epoch: int, round_: int) -> list[int]:
    """The shards of a split in the order of this epoch's `round_`-th pass, the same on
    every rank and worker (each takes its share of one order)."""
    order = sorted(int(j) for j in shards)
    random.Random(stream_seed(seed, epoch, round_, "shards")).shuffle(order)
    return order


def share(order: list[int], rank: int, world: int, worker: int, workers: int) -> list[int]:
    """The shards one DataLoader worker of one DDP rank reads: the ranks deal the order
    out first, then each rank's workers its part, so that every rank gets a shard while
    there are as many shards as ranks (webdataset's split_by_node, then split_by_worker).

    >>> [share(list(range(6)), r, 2, i, 2) for r in (0, 1) for i in (0, 1)]
    [[0, 4], [2], [1, 5], [3]]
    """
    return order[rank::world][worker::workers]


def shuffled(items, size: int, rng: random.Random):
    """`items` through a shuffle buffer of `size`: each item out is a random one of the
    `size` most recent (webdataset's .shuffle); the last `size` are shuffled at the end."""
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


def split_samples(index: PipeIndex, shards, rows: np.ndarray, *, whole: bool = True, stop=None):
    """(position in `rows`, sample with its image's bytes) for every row of sorted `rows`
    that lies in `shards`, shard after shard in the order given. `whole`: each shard is
    read to its end (which checks its sample count and its exit status); else each stops
    after its last wanted row. Every sample is checked against the index. `stop`: an Event
    that ends the reading (`Stopped`) when set."""
    import numpy as np

    for j in shards:
        start, end = int(index.starts[j]), int(index.starts[j + 1])
        lo, hi = np.searchsorted(rows, [start, end])
        if lo == hi and not whole:
            continue
        positions = np.full(end - start, -1, dtype=np.int64)
        positions[rows[lo:hi] - start] = np.arange(lo, hi)
        last = int(rows[hi - 1] - start) if hi > lo else -1
        stream = ShardStream(index.commands[j], keep=lambda k, p=positions: k < len(p) and p[k] >= 0,
                             stop=stop)
        k, stopped = -1, False
        try:
            for k, sample in enumerate(stream):
                if k >= len(positions):
                    raise _changed(index.commands[j], f"it holds more than the {len(positions):,} "
                                                      "samples indexed")
                if sample.label != index.labels[j][k]:
                    raise _changed(index.commands[j], f"sample {k + 1:,} ('{printable(sample.key)}') "
                                                      f"has label {sample.label}, the index "
                                                      f"{index.labels[j][k]}")
                stopped = k == last and not whole
                if stopped:   # the last one wanted: the command goes before it is used
                    stream.close()
                if positions[k] >= 0:
                    yield int(positions[k]), sample
                if stopped:
                    break
        finally:
            stream.close()
        if not stopped and k + 1 != len(positions):
            raise _changed(index.commands[j], f"it holds {k + 1:,} samples, the index "
                                              f"{len(positions):,}")


def _changed(command: str, why: str) -> CnnDslError:
    return CnnDslError(f"'{shown(command)}' changed since it was indexed ({why}): delete the "
                       "run folder's pipe-index-*.json to index the shards again")
