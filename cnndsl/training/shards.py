"""WebDataset tar shards (`--data wds:SPEC`): local files read by random access
(`ShardSplit`), or commands' output streamed (`wds:pipe:COMMAND`, `PipeSplit`).

Multi-node ImageNet training streams WebDataset shards: plain tar files in which the
members sharing a key (the member name up to the first '.' of its file name) make one
sample, e.g. `n01440764_10026.jpg` + `n01440764_10026.cls`. cnndsl reads local shards with
the same exactness as a folder: every sample is found once, by sample index, so batch order
and crops come from (seed, epoch, index), DDP ranks each decode their share of every
batch, and `--resume` repeats the uninterrupted run. That needs random access, so only
local, uncompressed shards are read this way (URLs are refused, as are `.tar.gz` shards:
a gzip stream cannot be entered in the middle). Shards behind commands (`curl`, `aws s3
cp`, `gzip -dc`) are streamed: see pipe_shards.py for the bytes and `PipeSplit` below for
the batches; the sample rules (`SampleGroups`) and limits are the same.

SPEC is either

* a folder holding `train-*.tar` (required), and optionally `test-*.tar` / `val-*.tar`:
  the roles of a folder's train/ test/ val/ (see `data._folder_parts`: test shards test,
  else val shards, else a seeded 20% of train; val shards next to test shards validate,
  else a seeded `val_fraction` of train); or
* a brace pattern of training shards, `/data/in1k/train-{000000..001023}.tar` (ranges keep
  their zero padding; lists `{a,b}` too), or one `.tar` file: a seeded 20% tests.

A sample is an image member (`.jpg`, `.jpeg`, `.png`, `.webp` where Pillow reads WebP)
and a label member (`.cls`, `.label` or `.target`: the class index in ASCII digits).
A key with only one of the two is an error naming the shard and key; members with
neither (metadata such as `.json`) are ignored, as are non-regular members (folders,
links). Class names come from a `classes.txt` next to the shards (one per line), else
they are the indices "0", "1", … up to the largest label.

The index (`index_shards`): every shard's tar headers are read once with `tarfile`
(nothing is decoded), recording per sample its shard, the image's data offset and size,
and its label. It is cached as JSON in `cache_dir` (the run folder), one entry per shard,
valid while the shard's path, size and mtime are unchanged; a shard modified in the last
`RACY_SECONDS` is indexed but not cached, and a damaged cache is ignored.

Every shard is hostile: only regular files are opened (a FIFO would block forever), no
single tar header read exceeds `MAX_HEADER_BYTES` (a pax header claiming gigabytes), an
image member over `MAX_IMAGE_BYTES` or a label over `MAX_LABEL_BYTES` is refused, as are
more than `MAX_SAMPLES` samples, a file that is not a tar, and a truncated one (a tar
must end with its end-of-archive block). Each is a one-line `CnnDslError` naming the file.
"""
from __future__ import annotations

import collections
import functools
import hashlib
import io
import itertools
import os
import random
import re
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CnnDslError
from . import images, limits, pipe_shards
from .images import Recipe, need_regular, one_line, open_regular
from .pipe_shards import printable
from .splits import _can_fork, _raising, _stack, sample_seed

ROLES = ("train", "test", "val")   # the order the shards' rows are numbered in
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
LABEL_EXTS = ("cls", "label", "target")
COMPRESSED = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst",
              ".tar.lz4")
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"),
          (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x04\x22\x4d\x18", "lz4"))

MAX_IMAGE_BYTES = 64 * limits.MiB     # one encoded image
MAX_LABEL_BYTES = 32                  # a class index in digits, with whitespace
MAX_HEADER_BYTES = 1 * limits.MiB     # one tar header (pax or GNU long name included)
MAX_SAMPLES = 100_000_000             # all shards together (ImageNet-21k has 14 M)
MAX_SHARDS = 1_000_000
MAX_CLASSES = 1_000_000
MAX_CLASSES_FILE = 64 * limits.MiB
MAX_PATTERN = 4096                    # characters of a brace pattern
OPEN_SHARDS = 128                     # shard files a worker keeps open (fds are limited)
BLOCK = tarfile.BLOCKSIZE
CACHE_VERSION = 1
RACY_SECONDS = 2.0


# --- the spec: which shards, in which role ----------------------------------------------


def expand_braces(pattern: str) -> list[str]:
    """Every name a brace pattern stands for, in order: `{a..b}` is a range of integers
    (zero padding kept when an end has it), `{x,y}` a list; braces may nest.

    >>> expand_braces("train-{000..002}.tar")
    ['train-000.tar', 'train-001.tar', 'train-002.tar']
    >>> expand_braces("{a,b{1..2}}-{9..10}")
    ['a-9', 'a-10', 'b1-9', 'b1-10', 'b2-9', 'b2-10']
    >>> expand_braces("plain.tar")
    ['plain.tar']
    """
    if len(pattern) > MAX_PATTERN:
        raise CnnDslError(f"a shard pattern may have at most {MAX_PATTERN} characters")
    return _expand(pattern, pattern)


def _expand(text: str, pattern: str) -> list[str]:
    start = text.find("{")
    if start < 0:
        if "}" in text:
            raise _brace_error(pattern, "a '}' without its '{'")
        return [text]
    end = _closing(text, start, pattern)
    head, body, tail = text[:start], text[start + 1:end], text[end + 1:]
    if "}" in head:
        raise _brace_error(pattern, "a '}' without its '{'")
    tails = _expand(tail, pattern)
    out = []
    for alternative in _alternatives(body, pattern):
        for middle in _expand(alternative, pattern):
            if len(out) + len(tails) > MAX_SHARDS:
                raise _brace_error(pattern, f"it names more than {MAX_SHARDS:,} shards")
            out.extend(head + middle + t for t in tails)
    return out


def _closing(text: str, start: int, pattern: str) -> int:
    """The index of the '}' matching the '{' at `start`."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise _brace_error(pattern, "a '{' without its '}'")


def _alternatives(body: str, pattern: str) -> list[str]:
    """What one brace group stands for: a range's numbers, or the list's items."""
    m = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if m:
        a, b = m.groups()
        lo, hi = int(a), int(b)
        if abs(hi - lo) >= MAX_SHARDS:
            raise _brace_error(pattern, f"it names more than {MAX_SHARDS:,} shards")
        padded = (len(a) > 1 and a[0] == "0") or (len(b) > 1 and b[0] == "0")
        width = max(len(a), len(b)) if padded else 0
        step = 1 if hi >= lo else -1
        return [str(n).zfill(width) for n in range(lo, hi + step, step)]
    items, depth, last = [], 0, 0
    for i, ch in enumerate(body):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(body[last:i])
            last = i + 1
    if not items:
        raise _brace_error(pattern, f"{{{limits.clip(body, 20)}}} is neither a range {{0..9}} "
                                    "nor a list {a,b}")
    return items + [body[last:]]


def _brace_error(pattern: str, why: str) -> CnnDslError:
    return CnnDslError(f"shard pattern '{limits.clip(pattern)}': {why}")


@dataclass
class _Layout:
    """Where the shards are: each role's files, and the folder a classes.txt may be in."""

    roles: dict[str, list[str]]
    folder: Path
    kind: str   # "folder" (train-*.tar, test-*.tar, val-*.tar) or "pattern"


def find_shards(spec: str) -> _Layout:
    """The shards `spec` names (see the module doc); every one a regular .tar file."""
    spec = spec.strip()
    if spec.startswith(pipe_shards.PIPE):   # load_data sends these to pipe_splits
        raise CnnDslError(f"wds:{printable(spec)}: a pipe: command is streamed (pipe_splits), "
                          "not read by random access")
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", spec):
        raise CnnDslError(f"wds:{printable(spec)}: cnndsl reads URLs through a command of yours: "
                          "write wds:pipe:curl -s URL (or aws s3 cp URL -, gsutil cat URL, …)")
    single = Path(spec).expanduser()
    if "{" in spec or "}" in spec or (os.path.lexists(single) and not single.is_dir()):
        paths = [str(Path(p).expanduser()) for p in expand_braces(spec)]
        for p in paths:
            _check_shard_name(p)
        _refuse_duplicates(paths)
        return _Layout({"train": paths}, Path(paths[0]).parent, "pattern")
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise CnnDslError(f"shard folder '{spec}' does not exist or is not a directory "
                          "(expected train-*.tar shards there, or a pattern like "
                          "train-{000000..000127}.tar)")
    roles = {role: files for role in ROLES if (files := _role_files(folder, role))}
    if "train" not in roles:
        raise CnnDslError(f"no train-*.tar shards in '{spec}'")
    return _Layout(roles, folder, "folder")


def _role_files(folder: Path, role: str) -> list[str]:
    """The folder's `role`-*.tar shards, sorted by name; a compressed one is refused."""
    try:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if e.name.startswith(f"{role}-"))
    except OSError as e:
        raise CnnDslError(f"cannot read '{folder}': {one_line(e)}") from None
    paths = [str(folder / n) for n in names if n.lower().endswith((".tar",) + COMPRESSED)]
    for p in paths:
        _check_shard_name(p)
    return paths


def _check_shard_name(path: str) -> None:
    if path.lower().endswith(COMPRESSED):
        raise _compressed_error(path, "compressed")
    if not path.lower().endswith(".tar"):
        raise CnnDslError(f"'{path}' is not a .tar shard (WebDataset shards are plain tar files)")
    if not os.path.lexists(path):
        raise CnnDslError(f"shard '{path}' does not exist")
    need_regular(path)


def _compressed_error(path: str, how: str) -> CnnDslError:
    return CnnDslError(f"'{path}' is a {how} tar: cnndsl reads uncompressed .tar shards only "
                       "(random access cannot enter a compressed stream); decompress it")


def _refuse_duplicates(paths: list[str]) -> None:
    seen = set()
    for p in paths:
        if p in seen:
            raise CnnDslError(f"shard '{p}' is named twice by the pattern")
        seen.add(p)


# --- indexing one shard ------------------------------------------------------------------


@dataclass
class _Entry:
    """One shard's samples, in member order, and the file's (size, mtime ns) then."""

    stamp: tuple[int, int]
    offsets: np.ndarray   # int64: where each image's bytes start
    sizes: np.ndarray     # int64: how many
    labels: np.ndarray    # int64


class _BoundedReads:
    """The shard file as tarfile sees it, with no single read above `MAX_HEADER_BYTES`:
    tarfile reads a pax or GNU long-name header whole, whatever size it claims."""

    def __init__(self, f, path: str) -> None:
        self.f, self.path = f, path

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > MAX_HEADER_BYTES:
            raise CnnDslError(f"'{self.path}': a tar header at byte {self.f.tell():,} is larger "
                              f"than {limits.human_bytes(MAX_HEADER_BYTES)} (damaged?)")
        return self.f.read(n)

    def seek(self, *args) -> int:
        return self.f.seek(*args)

    def tell(self) -> int:
        return self.f.tell()


_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError, UnicodeError, OverflowError)


def index_shard(path: str, room: int = MAX_SAMPLES, webp: bool = True) -> _Entry:
    """The samples of one shard, from its tar headers and label members (no image is
    read); at most `room` samples, else a one-line error."""
    with open_regular(path) as f:
        st = os.fstat(f.fileno())
        try:
            # pipe_shards' header checks too: old GNU sparse members are refused outright
            tar = tarfile.open(fileobj=_BoundedReads(f, path), mode="r:",
                               tarinfo=pipe_shards.TarHeader)
        except pipe_shards.Refused as e:
            raise CnnDslError(f"'{path}' {e}") from None
        except _TAR_ERRORS as e:
            raise _not_a_tar(path, f.fileno(), e) from None
        fd = f.fileno()
        group = SampleGroups(path, room, webp, read=lambda ti: os.pread(fd, ti.size, ti.offset_data))
        samples = [s for ti in _members(tar, path) if (s := group.add(ti)) is not None]
        # A truncated shard is said so before its last sample is found incomplete.
        _check_end(fd, path, tar.offset, st.st_size)
        if (last := group.flush()) is not None:
            samples.append(last)
    columns = ([s.offset for s in samples], [s.size for s in samples], [s.label for s in samples])
    return _Entry((st.st_size, st.st_mtime_ns), *(np.asarray(c, dtype=np.int64) for c in columns))


def _not_a_tar(path: str, fd: int, e: BaseException) -> CnnDslError:
    """Why a file is not a plain tar: compressed (said so: the fix is to decompress), or
    not a tar at all. Magic numbers are tested only here, as a tar's first member name
    could start with the same bytes."""
    head = os.pread(fd, 6, 0)
    for magic, how in _MAGIC:
        if head.startswith(magic):
            return _compressed_error(path, f"{how}-compressed")
    return CnnDslError(f"'{path}' is not a tar shard: {one_line(e)}")


def _members(tar: tarfile.TarFile, path: str):
    while True:
        try:
            ti = tar.next()
        except pipe_shards.Refused as e:
            raise CnnDslError(f"'{path}' {e}") from None
        except _TAR_ERRORS as e:
            raise CnnDslError(f"'{path}' is truncated or damaged: {one_line(e)}") from None
        if ti is None:
            return
        tar.members.clear()   # tarfile keeps every TarInfo: a big shard would pile them up
        yield ti


def _check_end(fd: int, path: str, offset: int, size: int) -> None:
    """tarfile stops quietly at a truncated or garbled header after the first: a whole tar
    ends with a zero block exactly where its last member ends."""
    if os.pread(fd, BLOCK, offset) != bytes(BLOCK):
        raise CnnDslError(f"'{path}' is truncated or damaged at byte {offset:,} of {size:,} "
                          "(no tar header and no end-of-archive block there)")


@dataclass
class Sample:
    """One sample of a shard: its key, its image member (where its data starts, how big,
    and its bytes when the reader kept them) and its label."""

    key: str
    ext: str            # the image member's extension: jpg, png, ...
    offset: int         # of the image's data in the tar
    size: int
    label: int
    data: bytes | None = None
    where: str = ""     # the shard, for messages


class SampleGroups:
    """Groups consecutive members by key into samples (webdataset's rule) and checks each,
    for both readers: the random-access index here and the streams of `pipe_shards`.

    `read(ti)` returns a member's bytes; it is called while that member is the current
    one (so a stream can be read), for every label and for the images `keep(k)` asks for
    (k: the sample's number in the shard, from 0). `where` names the shard in messages."""

    def __init__(self, where: str, room: int, webp: bool, read, keep=lambda k: False) -> None:
        self.where, self.room, self.webp, self.read, self.keep = where, room, webp, read, keep
        self.count = 0   # samples completed
        self.key, self.image, self.label = None, None, None

    def add(self, ti: tarfile.TarInfo) -> Sample | None:
        """Take one member; returns the sample before it when the member starts a new one."""
        if not ti.isreg():
            return None   # folders, links, devices: never read
        key, ext = split_name(ti.name)
        kind = "image" if ext in IMAGE_EXTS else "label" if ext in LABEL_EXTS else None
        if key is None or kind is None:
            return None
        done = None
        if key != self.key:
            done = self.flush()
            self.key = key
        if ti.issparse():
            raise self._error(f"member '{printable(ti.name)}' is a sparse file")
        if kind == "image":
            self._add_image(ti, ext)
        else:
            self._add_label(ti)
        return done

    def _add_image(self, ti: tarfile.TarInfo, ext: str) -> None:
        if self.image is not None:
            raise self._error("has two images")
        if ext == "webp" and not self.webp:
            raise self._error("is a WebP image, which this Pillow cannot read")
        if ti.size > MAX_IMAGE_BYTES:
            raise self._error(f"has a {limits.human_bytes(ti.size)} image, more than the "
                              f"{limits.human_bytes(MAX_IMAGE_BYTES)} cnndsl reads")
        data = self.read(ti) if self.keep(self.count) else None
        self.image = (ext, ti.offset_data, ti.size, data)

    def _add_label(self, ti: tarfile.TarInfo) -> None:
        if self.label is not None:
            raise self._error("has two labels")
        if ti.size > MAX_LABEL_BYTES:
            raise self._error(f"has a label member of {ti.size:,} bytes (a class index is a "
                              f"few digits)")
        data = self.read(ti)
        text = data.strip()
        if len(data) != ti.size or not text.isdigit() or int(text) >= MAX_CLASSES:
            shown = printable(data.decode("ascii", "replace"))
            raise self._error(f"has label '{shown}': expected a class index 0..{MAX_CLASSES - 1} "
                              "in ASCII digits")
        self.label = int(text)

    def flush(self) -> Sample | None:
        """The sample gathered so far, checked (None if there is none)."""
        if self.key is None:
            return None
        if self.image is None:
            raise self._error("has a label but no image (.jpg, .jpeg, .png or .webp)")
        if self.label is None:
            raise self._error("has an image but no label (.cls, .label or .target)")
        if self.count >= self.room:
            raise CnnDslError(f"'{self.where}': more than {MAX_SAMPLES:,} samples in the shards "
                              "together (damaged, or not a data set cnndsl can index)")
        ext, offset, size, data = self.image
        sample = Sample(self.key, ext, offset, size, self.label, data, self.where)
        self.count += 1
        self.key, self.image, self.label = None, None, None
        return sample

    def _error(self, why: str) -> CnnDslError:
        return CnnDslError(f"'{self.where}': sample '{printable(self.key)}' {why}")


def split_name(name: str) -> tuple[str | None, str]:
    """(key, extension) of a member name: the extension starts at the first '.' of the
    file name (webdataset's rule), lower-cased; (None, "") for a hidden or bare name.

    >>> split_name("imgs/n0144_10026.JPG")
    ('imgs/n0144_10026', 'jpg')
    >>> split_name("a.seg.png")
    ('a', 'seg.png')
    """
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not stem or not dot:
        return None, ""
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


# --- the index of all shards, and its cache --------------------------------------------


@dataclass
class ShardTable:
    """Every sample of every shard, as rows: which shard, where its image is, how big.
    Numpy columns, not Python objects: forked workers share them without copying."""

    paths: list[str]
    stamps: list[tuple[int, int]]   # each shard's (size, mtime ns) when indexed
    shard: np.ndarray               # int32 per row
    offset: np.ndarray              # int64 per row
    size: np.ndarray                # int64 per row


@dataclass
class ShardIndex:
    """The shards of a spec, shaped like `folder_index.FolderIndex` for
    `data._folder_parts`: `splits[role] = (rows of table, labels)`."""

    class_names: list[str]
    splits: dict[str, tuple[range, np.ndarray]]
    table: ShardTable
    layout: str


def index_shards(spec: str, cache_dir: str | Path | None = None) -> ShardIndex:
    """The index of the shards `spec` names, each shard's from the cache in `cache_dir`
    while the shard is unchanged, else from its tar headers."""
    layout = find_shards(spec)
    paths = [p for role in ROLES for p in layout.roles.get(role, [])]
    if len(paths) > MAX_SHARDS:
        raise CnnDslError(f"wds:{limits.clip(spec)}: more than {MAX_SHARDS:,} shards")
    entries = _entries(paths, cache_dir)
    splits, cursor = {}, 0
    for role in (r for r in ROLES if r in layout.roles):   # rows numbered in `paths` order
        labels = np.concatenate([entries[p].labels for p in layout.roles[role]])
        splits[role] = (range(cursor, cursor + len(labels)), labels)
        cursor += len(labels)
    if not len(splits["train"][0]):
        raise CnnDslError(f"wds:{limits.clip(spec)}: the train shards hold no samples")
    top = max(int(labels.max(initial=0)) for _, labels in splits.values())
    return ShardIndex(_class_names(layout.folder, top), splits, _table(paths, entries),
                      layout.kind)


def _entries(paths: list[str], cache_dir) -> dict[str, _Entry]:
    stamps = {p: _stamp(p) for p in paths}
    cache_file = None if cache_dir is None else _cache_file(Path(cache_dir), paths)
    cached = _load_cache(cache_file) if cache_file is not None else {}
    entries, total, fresh = {}, 0, False
    webp = _pillow_reads_webp()
    for p in paths:
        entry = _from_json(cached.get(_resolved(p)), stamps[p])
        if entry is None:
            entry, fresh = index_shard(p, MAX_SAMPLES - total, webp), True
        entries[p] = entry
        total += len(entry.labels)
        if total > MAX_SAMPLES:
            raise CnnDslError(f"'{p}': more than {MAX_SAMPLES:,} samples in the shards together")
    if cache_file is not None and fresh:
        _write(cache_file, entries)
    return entries


def _table(paths: list[str], entries: dict[str, _Entry]) -> ShardTable:
    counts = [len(entries[p].labels) for p in paths]
    shard = np.repeat(np.arange(len(paths), dtype=np.int32), counts)
    offset = np.concatenate([entries[p].offsets for p in paths])
    size = np.concatenate([entries[p].sizes for p in paths])
    return ShardTable(list(paths), [entries[p].stamp for p in paths], shard, offset, size)


def _stamp(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError as e:
        raise CnnDslError(f"cannot read '{path}': {one_line(e)}") from None
    return st.st_size, st.st_mtime_ns


def _resolved(path: str) -> str:
    return str(Path(path).resolve())


def _pillow_reads_webp() -> bool:
    from PIL import features

    return bool(features.check("webp"))


def _class_names(folder: Path, top: int) -> list[str]:
    """classes.txt's names (every label must be below their count), else "0".."top"."""
    path = folder / "classes.txt"
    if not os.path.lexists(path):
        return [str(i) for i in range(top + 1)]
    with open_regular(path) as f:
        data = f.read(MAX_CLASSES_FILE + 1)
    if len(data) > MAX_CLASSES_FILE:
        raise CnnDslError(f"'{path}' is larger than {limits.human_bytes(MAX_CLASSES_FILE)}")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise CnnDslError(f"'{path}' is not UTF-8 text (one class name per line)") from None
    names = [ln.strip() for ln in lines]
    while names and not names[-1]:
        names.pop()
    if "" in names or not names or len(names) > MAX_CLASSES:
        raise CnnDslError(f"'{path}' must hold 1 to {MAX_CLASSES:,} class names, one per line, "
                          "none empty")
    if top >= len(names):
        raise CnnDslError(f"a shard has label {top}, but '{path}' names only {len(names)} classes")
    return names


def _cache_file(cache_dir: Path, paths: list[str]) -> Path:
    text = "\n".join(map(_resolved, paths))
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
    return cache_dir / f"shard-index-{digest[:16]}.json"


def _load_cache(cache_file: Path) -> dict:
    from .folder_index import _read_json   # bounded, regular files only; None if unreadable

    payload = _read_json(cache_file)
    if not (isinstance(payload, dict) and payload.get("version") == CACHE_VERSION
            and isinstance(payload.get("shards"), dict)):
        return {}
    return payload["shards"]


def _from_json(raw, stamp: tuple[int, int]) -> _Entry | None:
    """A cached shard entry, if its stamp matches and it has the shape a fresh index has;
    None (re-index) for anything else."""
    if not (isinstance(raw, dict) and raw.get("stamp") == list(stamp)):
        return None
    cols = [_int_column(raw.get(k)) for k in ("offsets", "sizes", "labels")]
    if any(c is None for c in cols) or len({len(c) for c in cols}) != 1:
        return None
    offsets, sizes, labels = cols
    ok = ((offsets >= BLOCK) & (offsets % BLOCK == 0) & (sizes >= 0) & (sizes <= MAX_IMAGE_BYTES)
          & (offsets + sizes <= stamp[0]) & (labels >= 0) & (labels < MAX_CLASSES)).all()
    if not ok or not (np.diff(offsets) > 0).all():
        return None
    return _Entry(stamp, offsets, sizes, labels)


def _int_column(value) -> np.ndarray | None:
    if not isinstance(value, list) or len(value) > MAX_SAMPLES:
        return None
    if not value:
        return np.zeros(0, dtype=np.int64)
    try:
        a = np.asarray(value)
    except (ValueError, OverflowError, TypeError):
        return None
    return a.astype(np.int64) if a.ndim == 1 and a.dtype.kind == "i" else None


def _write(cache_file: Path, entries: dict[str, _Entry]) -> None:
    """Cache every shard not modified in the last RACY_SECONDS (a write within the same
    mtime tick as our read would go unnoticed)."""
    from .folder_index import _write_cache   # atomic; a failure is only a slower start

    recent = time.time_ns() - int(RACY_SECONDS * 1e9)
    shards = {_resolved(p): {"stamp": list(e.stamp), "offsets": e.offsets.tolist(),
                             "sizes": e.sizes.tolist(), "labels": e.labels.tolist()}
              for p, e in entries.items() if e.stamp[1] <= recent}
    if shards:
        _write_cache(cache_file, {"version": CACHE_VERSION, "shards": shards})


# --- decoding one sample ---------------------------------------------------------------


def decode_bytes(data, channels: int, size: tuple[int, int], *, train: bool, recipe: Recipe,
                 seed: int, name: str = "<bytes>") -> torch.Tensor:
    """An encoded image (bytes) as uint8 `channels`×H×W: exactly `images.decode` of the
    same bytes as a file (the same Pillow calls, draft and crop); `name` for errors."""
    if not len(data):
        raise CnnDslError(f"cannot read image '{name}': the member is empty")
    return images.decode_file(io.BytesIO(data), name, channels, size, train=train,
                              recipe=recipe, seed=seed)


class _Reader:
    """Reads rows of a ShardTable: shard files opened on first use (in whichever process
    reads) and kept open, at most OPEN_SHARDS of them. `os.pread` never moves a file
    offset, so a descriptor inherited through fork is still safe to share."""

    def __init__(self, table: ShardTable) -> None:
        self.table = table
        self.files: collections.OrderedDict = collections.OrderedDict()

    def __getstate__(self):   # a spawned worker opens its own files
        return {"table": self.table, "files": collections.OrderedDict()}

    def read(self, row: int) -> tuple[bytes, str]:
        """The image bytes of `row`, and its name for messages ('shard.tar:key.jpg')."""
        t = self.table
        k, offset, size = int(t.shard[row]), int(t.offset[row]), int(t.size[row])
        path = self.table.paths[k]
        blob = os.pread(self._file(k).fileno(), BLOCK + size, offset - BLOCK)
        if len(blob) != BLOCK + size:
            raise CnnDslError(f"cannot read image '{path}': truncated at byte {offset:,}")
        return blob[BLOCK:], f"{path}:{_member_name(blob[:BLOCK])}"

    def _file(self, k: int):
        f = self.files.get(k)
        if f is not None:
            self.files.move_to_end(k)
            return f
        path = self.table.paths[k]
        f = open_regular(path)
        st = os.fstat(f.fileno())
        if (st.st_size, st.st_mtime_ns) != self.table.stamps[k]:
            f.close()
            raise CnnDslError(f"shard '{path}' changed since it was indexed; run again to re-index")
        self.files[k] = f
        if len(self.files) > OPEN_SHARDS:
            self.files.popitem(last=False)[1].close()
        return f


def _member_name(header: bytes) -> str:
    """The member's name from its tar header, just before its data (for messages only)."""
    try:
        return printable(tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape").name)
    except _TAR_ERRORS + (tarfile.HeaderError,):
        return "?"


# --- the split ---------------------------------------------------------------------------


class _ShardRows:
    """What ShardSplit and PipeSplit share: rows of a shard index, their labels, and how
    each image is cropped and seeded; `splits.FileSplit`'s interface but `batches`."""

    def __init__(self, source, rows, y: torch.Tensor, shape: tuple[int, int, int],
                 recipe: Recipe, seed: int, workers: int, skip_bad: bool = False):
        self.source, self.rows = source, np.asarray(rows, dtype=np.int64)
        self.y, self.shape = y, tuple(shape)
        self.recipe, self.seed, self.workers = recipe, seed, workers
        self.skip_bad = skip_bad
        self.skipped: set[str] = set()   # what could not be decoded (with skip_bad)

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int):
        return type(self)(self.source, self.rows[:n], self.y[:n], self.shape, self.recipe,
                          self.seed, self.workers, self.skip_bad)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0)

    def to(self, device) -> None:
        pass   # the shards stay on disk, or behind their commands

    @property
    def nbytes(self) -> int:
        return 0


class ShardSplit(_ShardRows):
    """Samples of tar shards decoded in worker processes (sample i of epoch e is cropped
    with sample_seed(seed, e, i)); the source is a `ShardTable`."""

    @property
    def table(self) -> ShardTable:
        return self.source

    def batches(self, index_batches, *, epoch: int = 0, train: bool = False):
        """The batches, decoded by `workers` processes (none: in this one), in order."""
        batch_lists = [idx.tolist() for idx in index_batches]
        if not batch_lists:
            return iter(())
        workers = min(self.workers, len(batch_lists))
        loader = torch.utils.data.DataLoader(
            _ShardSamples(self, epoch, train), batch_sampler=batch_lists, num_workers=workers,
            collate_fn=functools.partial(_stack, shape=self.shape),
            pin_memory=torch.cuda.is_available(),
            # Its own generator, as FileSplit: the global RNG must not be drawn from.
            generator=torch.Generator().manual_seed(self.seed),
            prefetch_factor=4 if workers else None, persistent_workers=False,
            multiprocessing_context="fork" if workers and _can_fork() else None)
        return _raising(loader, self.skipped if self.skip_bad else None)


class _ShardSamples(torch.utils.data.Dataset):
    """What a worker decodes: sample i of a ShardSplit in epoch `epoch`."""

    def __init__(self, split: ShardSplit, epoch: int, train: bool):
        self.rows, self.y, self.shape = split.rows, split.y, split.shape
        self.recipe, self.seed, self.epoch, self.train = split.recipe, split.seed, epoch, train
        self.reader = _Reader(split.table)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        c, h, w = self.shape
        try:
            data, name = self.reader.read(int(self.rows[i]))
            x = decode_bytes(data, c, (h, w), train=self.train, recipe=self.recipe,
                             seed=sample_seed(self.seed, self.epoch, i), name=name)
        except CnnDslError as e:   # reported by the main process, in one line (_raising)
            return None, e.message
        return x, self.y[i]


# --- the three splits ------------------------------------------------------------------


def shard_splits(spec: str, name: str, shape, opts):
    """`load_data`'s `wds:SPEC`: the shards indexed, the roles carved as a folder's
    (`data._folder_parts`), then held in memory or streamed as `--cache` says."""
    from .data import _folder_parts, held_or_streamed

    index = index_shards(spec, opts.index_dir)
    recipe = Recipe.from_augment(opts.augment or {})
    streamed = [ShardSplit(index.table, rows, y, shape, recipe, opts.seed, opts.workers,
                           opts.skip_bad) for rows, y in _folder_parts(index, opts)]
    where = f" in {len(index.table.paths):,} shards"
    return held_or_streamed(streamed, index.class_names, name, where, recipe, opts)


# --- streamed from commands: wds:pipe: -------------------------------------------------------


class PipeSplit(_ShardRows):
    """Samples of `pipe:` shards (see pipe_shards: its "Epochs" and "Resume"), with
    `splits.FileSplit`'s interface; a stream has no random access, so `batches` reads in
    one of two ways:

    * a training epoch (`train=True`): this DDP rank's share of the split's shards, read by
      `workers` DataLoader processes through the shuffle buffer. The batches have the sizes
      asked for; the indices themselves are not used, the stream decides which samples fill
      them. A rank whose shards run out before its epoch does starts another pass over them
      (reshuffled); one whose shards hold more stops early.
    * anything else (validation, test, statistics, `--cache ram`): exactly the samples asked
      for, which must come in increasing order, read in this process shard after shard, each
      only as far as its last wanted sample; the images are decoded by the workers.

    Each sample's crop is seeded from (seed, epoch, its index in the split), as in ShardSplit."""

    sequential = True   # no random access: a reader should ask for samples in order

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shards = sorted(set(self.index.shard_of(self.rows).tolist()))   # those holding its rows

    @property
    def index(self):
        """The pipe_shards index of the stream's shards."""
        return self.source

    def batches(self, index_batches, *, epoch: int = 0, train: bool = False):
        lists = [idx.tolist() for idx in index_batches]
        if not any(lists):
            return iter(())
        if train:
            return self._stream([len(idx) for idx in lists], epoch)
        return self._in_order(lists, epoch)

    def _collate(self, items):
        """_stack, or the failure of the stream the items came from (see _Failed)."""
        failed = next((item for item in items if isinstance(item, _Failed)), None)
        return failed if failed is not None else _stack(items, self.shape)

    def _loader(self, dataset, workers: int, **how):
        how.setdefault("collate_fn", functools.partial(_stack, shape=self.shape))
        return torch.utils.data.DataLoader(
            dataset, num_workers=workers, pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.seed),   # not the global RNG
            prefetch_factor=4 if workers else None, persistent_workers=False,
            multiprocessing_context=_mp_context() if workers else None, **how)

    def _stream(self, sizes: list[int], epoch: int):
        """A training epoch's batches, of `sizes`, from this rank's shards."""
        rank, world = pipe_shards.process_rank()
        if len(self.shards) < world:
            raise CnnDslError(f"the training samples of the wds:pipe: source lie in "
                              f"{len(self.shards)} shards, fewer than the {world} DDP processes: "
                              "each process reads whole shards of its own; give more shards")
        pending, wanted = [], iter(sizes)
        want = next(wanted)
        for round_ in itertools.count():
            # Set before the loader is dropped, however this generator ends: its workers
            # then stop reading at once (one waiting on a stream would hold up the loader's
            # shutdown) and kill their commands as their readers unwind.
            stop = _mp_context().Event()
            stream = _StreamedSamples(self, epoch, round_, rank, world, stop)
            loader = self._loader(stream, min(self.workers, len(stream.shards)),
                                  batch_size=max(sizes), collate_fn=self._collate)
            loaded = _raising(_unfailed(loader), self.skipped if self.skip_bad else None)
            got = 0
            try:
                for x, y in loaded:
                    got += len(x)
                    pending.append((x, y))
                    while want is not None and sum(len(p[0]) for p in pending) >= want:
                        yield _take(pending, want)
                        want = next(wanted, None)
                    if want is None:
                        return
            finally:
                stop.set()
                loaded.close()   # the loader's workers stop, after `stop` is set
            if not got:
                raise CnnDslError(f"process {rank} of {world}: its shards of the wds:pipe: "
                                  "source hold no training samples")

    def _in_order(self, lists: list[list[int]], epoch: int):
        """Exactly the samples of `lists` (increasing), in batches of their sizes."""
        flat = np.asarray([i for idx in lists for i in idx], dtype=np.int64)
        if (np.diff(flat) <= 0).any():
            raise CnnDslError("a wds:pipe: split is read as a stream: its samples must be asked "
                              "for in increasing order")
        wanted = self.rows[flat]
        samples = pipe_shards.split_samples(self.index, sorted(set(self.index.shard_of(wanted).tolist())),
                                            wanted, whole=False)
        items = ((int(flat[k]), sample) for k, sample in samples)
        batch_lists = (list(itertools.islice(items, len(idx))) for idx in lists)
        workers = min(self.workers, len(lists))
        loader = self._loader(_DecodedSamples(self, epoch, train=False), workers,
                              batch_sampler=batch_lists)
        return _raising(loader, self.skipped if self.skip_bad else None)


@dataclass
class _Failed:
    """A stream's failure (a command that failed, a damaged archive), sent by a worker as
    a batch of its own: raised in a worker, it would reach the main process as a
    multi-line traceback; `_unfailed` raises it there, in one line. Unlike an image that
    cannot be decoded, it is never skipped."""

    message: str


def _unfailed(loader):
    for batch in loader:
        if isinstance(batch, _Failed):
            raise CnnDslError(batch.message)
        yield batch


def _mp_context():
    """The multiprocessing context of the workers (fork where there is one, as FileSplit)."""
    import multiprocessing

    return multiprocessing.get_context("fork" if _can_fork() else None)


def _take(pending: list, n: int):
    """The first `n` samples of the batches in `pending`; the rest stays there."""
    if len(pending[0][0]) == n:   # the common case: a batch of the size wanted, as it came
        return pending.pop(0)
    x = torch.cat([p[0] for p in pending])
    y = torch.cat([p[1] for p in pending])
    pending[:] = [(x[n:], y[n:])] if len(x) > n else []
    return x[:n], y[:n]


class _DecodedSamples:
    """A worker's decoding of streamed samples: item (index in the split, Sample) → (x, y),
    or (None, message) for `_stack`, as `_ShardSamples`."""

    def __init__(self, split: PipeSplit, epoch: int, train: bool):
        self.shape, self.recipe, self.seed = split.shape, split.recipe, split.seed
        self.epoch, self.train = epoch, train

    def __getitem__(self, item):
        i, sample = item
        c, h, w = self.shape
        name = f"{sample.where}:{sample.key}.{sample.ext}"
        try:
            x = decode_bytes(sample.data, c, (h, w), train=self.train, recipe=self.recipe,
                             seed=sample_seed(self.seed, self.epoch, i), name=name)
        except CnnDslError as e:
            return None, e.message
        return x, torch.tensor(sample.label, dtype=torch.int64)


class _StreamedSamples(torch.utils.data.IterableDataset):
    """One training pass of one rank: in each DataLoader worker, its share of the rank's
    shards, through the shuffle buffer, decoded. Everything is seeded from (seed, epoch,
    round, rank, worker): the same run streams the same batches."""

    def __init__(self, split: PipeSplit, epoch: int, round_: int, rank: int, world: int,
                 stop=None):
        self.index, self.rows, self.stop = split.index, split.rows, stop
        self.decoded = _DecodedSamples(split, epoch, train=True)
        self.seed, self.epoch, self.round, self.rank = split.seed, epoch, round_, rank
        self.shards = pipe_shards.shard_order(split.shards, split.seed, epoch, round_)[rank::world]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = self.shards[worker::workers]
        rng = random.Random(pipe_shards.stream_seed(self.seed, self.epoch, self.round, self.rank,
                                                    worker, "buffer"))
        samples = pipe_shards.split_samples(self.index, mine, self.rows, stop=self.stop)
        try:
            for item in pipe_shards.shuffled(samples, pipe_shards.SHUFFLE_BUFFER, rng):
                yield self.decoded[item]
        except pipe_shards.Stopped:
            return   # the epoch took what it needed
        except CnnDslError as e:
            yield _Failed(e.message)


def pipe_splits(spec: str, name: str, shape, opts):
    """`load_data`'s `wds:pipe:…`: the commands indexed once, the roles carved by whole
    shards (`pipe_parts`), then held in memory or streamed as `--cache` says."""
    from .data import held_or_streamed

    index = pipe_shards.index_pipe(spec, opts.index_dir)
    recipe = Recipe.from_augment(opts.augment or {})
    labels = np.concatenate(index.labels)
    streamed = [PipeSplit(index, rows, torch.as_tensor(labels[rows]), shape, recipe, opts.seed,
                          opts.workers, opts.skip_bad) for rows in pipe_parts(index, opts)]
    where = f" in {len(index.commands):,} pipe: shards ({index.how})"
    return held_or_streamed(streamed, index.class_names, name, where, recipe, opts,
                            medium="their commands")


def pipe_parts(index, opts) -> list[np.ndarray]:
    """The rows of train, val and test, by whole shards: the shards' names give roles as a
    folder's files do (`data._folder_parts`: test shards test, else val shards; val shards
    next to test shards validate); what is missing is a seeded share of the training shards
    (TEST_FRACTION tests, then `val_fraction` of the rest validates). `--limit` then cuts
    the training rows."""
    from .data import TEST_FRACTION, _carve_indices

    named = {role: [j for j, r in enumerate(index.roles) if r == role] for role in ("test", "val")}
    train = [j for j, r in enumerate(index.roles) if r in (None, "train")]
    test_role = next((role for role in ("test", "val") if named[role]), None)

    def carve(shards: list[int], fraction: float) -> tuple[list[int], list[int]]:
        kept, held = _carve_indices(len(shards), fraction, opts.seed)
        return [shards[i] for i in kept.tolist()], [shards[i] for i in held.tolist()]

    if test_role is None:
        train, test = carve(train, TEST_FRACTION)
    else:
        test = named[test_role]
    if test_role == "test" and named["val"]:
        val = named["val"]
    else:
        train, val = carve(train, opts.val_fraction)
    train_rows = index.rows(train)
    if opts.limit is not None:
        train_rows = train_rows[:opts.limit]
    if not len(train_rows):
        raise CnnDslError("the wds:pipe: source has no training samples (every shard is a "
                          "test or val shard, or holds none)")
    return [train_rows, index.rows(val), index.rows(test)]
