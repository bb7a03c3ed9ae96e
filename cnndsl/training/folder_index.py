"""Indexing a class-per-folder tree of images (`--data folder:DIR`) without opening an image.

The layout rules are `load_data`'s for `folder:DIR`:

* split: DIR/train/ is a folder. Its sub-folders are the classes; DIR/test/ and DIR/val/,
  when present, hold sub-folders named after (some of) those classes — a class folder
  that train/ lacks is an error.
* flat: otherwise DIR's own sub-folders are the classes (the caller carves the splits).

Class folders are sorted by name (label = position); files are sorted by name within a
class; names starting with "." are skipped; an image is a name ending in .png, .jpg or
.jpeg (any case) that is a regular file after symlinks — a FIFO, device, socket or
folder named x.png is refused with a one-line error naming it, as `load_data` does
(reading a FIFO would block a loader worker forever).

Speed (ImageNet's 1.28 M files in seconds): one `os.scandir` per class folder, plain
strings, and no `stat` for a regular file — `DirEntry.is_file()` answers from the
directory entry's type on Linux; only an entry that is not a plain file (a symlink, or
something odd) costs a `stat`.

The cache (`cache_dir`): a JSON file per root, `folder-index-<16 hex of sha256(resolved
root)>.json`, written atomically (temp file + `os.replace`), that holds each class
folder's file names. Its validity key is the name and mtime (ns) of the root, the split
folders and every class folder: adding, removing or renaming a file changes its
folder's mtime. The key is computed from a fresh listing of those folders (about one
`stat` per class folder), and the cache is used only when it matches exactly. A folder
modified in the last `RACY_SECONDS` is indexed but not cached: a file added within the
same mtime tick as our listing would leave the mtime unchanged (git calls this "racily
clean"). The cache file is hostile like any other: read only if regular and at most
`MAX_CACHE_BYTES`, and anything but the exact expected shape is ignored (re-indexed).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CnnDslError
from .images import IMAGE_SUFFIXES, not_regular_error, one_line, open_regular
from .limits import MiB

SPLITS = ("train", "test", "val")   # the order load_data reads (and checks) them in
CACHE_VERSION = 1
MAX_CACHE_BYTES = 512 * MiB
RACY_SECONDS = 2.0


@dataclass
class FolderIndex:
    """Every image of a folder tree: `splits[name] = (paths, labels)` for "train" (always)
    and "test" / "val" (when the split layout has them); labels index `class_names`."""

    class_names: list[str]
    splits: dict[str, tuple[list[str], list[int]]]
    layout: str   # "flat" (DIR/class/x.png) or "split" (DIR/train/class/x.png, ...)


@dataclass
class _Survey:
    """The folder structure, without the files: what the cache key is made of."""

    layout: str
    folders: dict[str, tuple[Path, list[str]]]   # split -> (its folder, its class folders)
    key: list[list]                               # [[relative name, mtime ns], ...]
    newest_mtime_ns: int


def index_folder(root: str | Path, cache_dir: str | Path | None = None) -> FolderIndex:
    """The index of the folder tree at `root` (see the module doc), from the cache in
    `cache_dir` when it is still valid, else by listing every class folder."""
    d = _need_dir(root)
    survey = _survey(d)
    class_names = _class_names(survey)
    cache_file = None if cache_dir is None else _cache_file(Path(cache_dir), d)
    per_class = _load_cache(cache_file, d, survey) if cache_file is not None else None
    if per_class is None:
        per_class = {split: _list_split(folder, present, class_names)
                     for split, (folder, present) in survey.folders.items()}
        if cache_file is not None and not _racy(survey):
            _write_cache(cache_file, _payload(d, survey, per_class))
    splits = {split: _paths_and_labels(survey.folders[split][0], class_names, files)
              for split, files in per_class.items()}
    return FolderIndex(class_names, splits, survey.layout)


def _need_dir(root) -> Path:
    d = Path(root).expanduser()
    if not d.is_dir():
        raise CnnDslError(f"data directory '{root}' does not exist or is not a directory "
                          "(expected one sub-folder of PNG/JPEG images per class there)")
    return d


# --- the structure: split folders and class folders ------------------------------------


def _survey(d: Path) -> _Survey:
    layout = "split" if (d / "train").is_dir() else "flat"
    if layout == "split":
        tops = {s: d / s for s in SPLITS if (d / s).is_dir()}
    else:
        tops = {"train": d}
    key = [["", _mtime_ns(d)]]
    folders = {}
    for split, folder in tops.items():
        prefix = "" if layout == "flat" else f"{split}/"
        if prefix:
            key.append([split, _mtime_ns(folder)])
        classes = _class_folders(folder)
        folders[split] = (folder, [name for name, _ in classes])
        key.extend([prefix + name, mtime] for name, mtime in classes)
    return _Survey(layout, folders, key, max(mtime for _, mtime in key))


def _class_folders(folder: Path) -> list[tuple[str, int]]:
    """(name, mtime ns) of the non-hidden sub-folders (symlinks followed), sorted by name."""
    found = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not entry.name.startswith(".") and entry.is_dir():
                    found.append((entry.name, entry.stat().st_mtime_ns))
    except OSError as e:
        raise CnnDslError(f"cannot read '{folder}': {_why(e)}") from None
    return sorted(found)


def _mtime_ns(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError as e:
        raise CnnDslError(f"cannot read '{path}': {_why(e)}") from None


def _class_names(survey: _Survey) -> list[str]:
    """The training split's class folders, after checking every split's folders as
    load_data does (same messages)."""
    names = survey.folders["train"][1]
    for folder, present in survey.folders.values():
        if not present:
            raise CnnDslError(f"no class folders in '{folder}' (expected one sub-folder of "
                              "images per class)")
        extra = sorted(set(present) - set(names))
        if extra:
            raise CnnDslError(f"'{folder}' has class folder '{extra[0]}' that the training "
                              "split lacks")
    return names


# --- the files ------------------------------------------------------------------------


def _list_split(folder: Path, present: list[str], class_names: list[str]) -> list[list[str]]:
    """Sorted image file names of each class (in label order; [] where a test or val split
    has no folder for the class)."""
    here = set(present)
    per_class = []
    for name in class_names:
        files = _list_class(folder / name) if name in here else []
        if name in here and not files:
            raise CnnDslError(f"class folder '{folder / name}' has no PNG/JPEG images")
        per_class.append(files)
    if not any(per_class):
        raise CnnDslError(f"no PNG/JPEG images in the class folders of '{folder}'")
    return per_class


def _list_class(class_dir: Path) -> list[str]:
    """The image file names in one class folder, sorted; refuses one that is not a regular
    file. The hot loop: no Path objects and no stat for regular files."""
    names, odd = [], []
    try:
        with os.scandir(class_dir) as entries:
            for entry in entries:
                name = entry.name
                if name[0] == "." or not name.lower().endswith(IMAGE_SUFFIXES):
                    continue
                if entry.is_file():   # follows symlinks; no syscall for a plain file
                    names.append(name)
                else:
                    odd.append(entry)
    except OSError as e:
        raise CnnDslError(f"cannot read '{class_dir}': {_why(e)}") from None
    # Refuse the first bad entry in name order, so the message does not depend on the
    # order the file system lists them in.
    names.extend(_regular_names(sorted(odd, key=lambda e: e.name)))
    names.sort()
    return names


def _regular_names(entries: list[os.DirEntry]) -> list[str]:
    """Names of the entries that are regular files after all (one became one since the
    listing); the first that is not is refused."""
    regular = []
    for entry in entries:
        try:
            mode = entry.stat().st_mode
        except OSError as e:   # a dangling symlink, or a file removed meanwhile
            raise CnnDslError(f"cannot read '{entry.path}': {_why(e)}") from None
        if not stat.S_ISREG(mode):
            raise not_regular_error(entry.path, mode)
        regular.append(entry.name)
    return regular


def _paths_and_labels(folder: Path, class_names: list[str], per_class: list[list[str]]
                      ) -> tuple[list[str], list[int]]:
    paths: list[str] = []
    labels: list[int] = []
    for label, (name, files) in enumerate(zip(class_names, per_class)):
        prefix = os.path.join(str(folder / name), "")
        paths.extend([prefix + f for f in files])
        labels.extend([label] * len(files))
    return paths, labels


def _why(e: OSError) -> str:
    # strerror, not str(e): the latter repeats the path the message already names.
    return e.strerror if getattr(e, "strerror", None) else one_line(e)


# --- the cache --------------------------------------------------------------------------


def _cache_file(cache_dir: Path, d: Path) -> Path:
    digest = hashlib.sha256(str(d.resolve()).encode("utf-8", "surrogateescape")).hexdigest()
    return cache_dir / f"folder-index-{digest[:16]}.json"


def _racy(survey: _Survey) -> bool:
    """True if a folder changed so recently that a change in the same mtime tick (after our
    listing) could go unnoticed: such a tree is indexed but not cached."""
    return survey.newest_mtime_ns > time.time_ns() - int(RACY_SECONDS * 1e9)


def _payload(d: Path, survey: _Survey, per_class: dict[str, list[list[str]]]) -> dict:
    return {"version": CACHE_VERSION, "root": str(d.resolve()), "key": survey.key,
            "files": per_class}


def _write_cache(cache_file: Path, payload: dict) -> None:
    """Write atomically; a cache that cannot be written is only a slower next start."""
    tmp = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".folder-index-", suffix=".tmp", dir=cache_file.parent)
        with os.fdopen(fd, "w", encoding="ascii") as f:   # ensure_ascii: odd names escaped
            json.dump(payload, f, separators=(",", ":"))
        os.replace(tmp, cache_file)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _load_cache(cache_file: Path, d: Path, survey: _Survey) -> dict[str, list[list[str]]] | None:
    """The cached per-class file names if the cache is intact and its key matches; None
    (re-index) for anything else: missing, not regular, too big, not JSON, wrong shape."""
    payload = _read_json(cache_file)
    if not (isinstance(payload, dict) and payload.get("version") == CACHE_VERSION
            and payload.get("root") == str(d.resolve()) and payload.get("key") == survey.key):
        return None
    files = payload.get("files")
    if not isinstance(files, dict) or set(files) != set(survey.folders):
        return None
    class_names = survey.folders["train"][1]
    for split, (_, present) in survey.folders.items():
        if not _valid_split(files[split], class_names, set(present)):
            return None
    return {split: files[split] for split in survey.folders}


def _read_json(path: Path):
    try:
        with open_regular(path) as f:
            if os.fstat(f.fileno()).st_size > MAX_CACHE_BYTES:
                return None
            data = f.read(MAX_CACHE_BYTES + 1)
        return None if len(data) > MAX_CACHE_BYTES else json.loads(data)
    except (CnnDslError, OSError, ValueError, RecursionError):
        return None


def _valid_split(per_class, class_names: list[str], present: set[str]) -> bool:
    """The invariants of a fresh listing: one sorted list of image names per class,
    non-empty exactly where the class folder exists."""
    if not isinstance(per_class, list) or len(per_class) != len(class_names):
        return False
    return all(isinstance(files, list) and bool(files) == (name in present) and _valid_names(files)
               for name, files in zip(class_names, per_class))


def _valid_names(files: list) -> bool:
    """Plain image file names (no path: a cache must not point outside its folder),
    strictly increasing (sorted, no duplicates)."""
    previous = ""
    for name in files:
        if not (isinstance(name, str) and name > previous and name[0] != "."
                and "/" not in name and "\0" not in name and os.sep not in name
                and name.lower().endswith(IMAGE_SUFFIXES)):
            return False
        previous = name
    return True
