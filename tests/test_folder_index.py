"""folder_index.py: listing a class-per-folder tree (no image is opened: files are empty)."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from cnndsl.errors import CnnDslError
from cnndsl.training import folder_index
from cnndsl.training.folder_index import FolderIndex, index_folder

DAY = 86_400


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def age(root: Path, seconds: int = DAY) -> None:
    """Set every folder's mtime into the past, as a data set that is not being written to
    (a folder changed in the last 2 s is deliberately not cached)."""
    past = time.time() - seconds
    for folder, _, _ in os.walk(root):
        os.utime(folder, (past, past))


def error_of(*args, **kw) -> str:
    with pytest.raises(CnnDslError) as e:
        index_folder(*args, **kw)
    assert "\n" not in str(e.value)
    return e.value.message


@pytest.fixture
def scandirs(monkeypatch):
    """The folders os.scandir was called on, recorded."""
    seen = []
    real = os.scandir

    def spy(path="."):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", spy)
    return seen


# --- layouts ----------------------------------------------------------------------------


def test_flat_layout_names_labels_and_order(tmp_path):
    touch(tmp_path, "dog/b.png", "dog/a.JPG", "dog/c.jpeg", "cat/z.jpg", "cat/10.png", "cat/9.png",
          "cat/notes.txt", "cat/.hidden.png", "cat/x.gif", "cat/png", ".git/HEAD.png", "README.md")
    (tmp_path / ".cache").mkdir()
    idx = index_folder(tmp_path)
    assert isinstance(idx, FolderIndex) and idx.layout == "flat"
    assert idx.class_names == ["cat", "dog"]
    assert list(idx.splits) == ["train"]
    paths, labels = idx.splits["train"]
    assert paths == [str(tmp_path / n) for n in ("cat/10.png", "cat/9.png", "cat/z.jpg",
                                                  "dog/a.JPG", "dog/b.png", "dog/c.jpeg")]
    assert labels == [0, 0, 0, 1, 1, 1]
    assert all(type(p) is str for p in paths)


def test_split_layout(tmp_path):
    touch(tmp_path, "train/b/1.png", "train/a/2.png", "train/a/1.png", "train/c/1.png",
          "test/a/t.png", "test/c/t1.png", "test/c/t0.png", "val/b/v.jpg", "other/zz/q.png")
    idx = index_folder(str(tmp_path))
    assert idx.layout == "split" and idx.class_names == ["a", "b", "c"]
    assert sorted(idx.splits) == ["test", "train", "val"]
    assert idx.splits["train"] == ([str(tmp_path / "train" / n) for n in ("a/1.png", "a/2.png", "b/1.png", "c/1.png")],
                                   [0, 0, 1, 2])
    # test/ has no folder for class b: fine, and the labels still index the train classes.
    assert idx.splits["test"] == ([str(tmp_path / "test" / n) for n in ("a/t.png", "c/t0.png", "c/t1.png")],
                                  [0, 2, 2])
    assert idx.splits["val"] == ([str(tmp_path / "val/b/v.jpg")], [1])


def test_split_layout_without_test_or_val(tmp_path):
    touch(tmp_path, "train/a/1.png", "train/b/1.png", "val/a/1.png")
    assert sorted(index_folder(tmp_path).splits) == ["train", "val"]
    touch(tmp_path / "x", "train/a/1.png")
    assert list(index_folder(tmp_path / "x").splits) == ["train"]


def test_paths_keep_the_callers_spelling(tmp_path, monkeypatch):
    touch(tmp_path, "data/a/1.png")
    monkeypatch.chdir(tmp_path)
    assert index_folder("data").splits["train"][0] == [os.path.join("data", "a", "1.png")]
    assert index_folder("./data/").splits["train"][0] == [os.path.join("data", "a", "1.png")]


# --- errors: the messages load_data gives today, word for word ----------------------------


def test_layout_errors(tmp_path):
    missing = tmp_path / "nothing-here"
    assert error_of(missing) == (f"data directory '{missing}' does not exist or is not a "
                                 "directory (expected one sub-folder of PNG/JPEG images per class there)")
    (tmp_path / ".hidden").mkdir()
    touch(tmp_path, "loose.png")
    assert error_of(tmp_path) == (f"no class folders in '{tmp_path}' (expected one sub-folder "
                                  "of images per class)")
    (tmp_path / "a").mkdir()
    touch(tmp_path, "b/x.png", "a/notes.txt")
    assert error_of(tmp_path) == f"class folder '{tmp_path / 'a'}' has no PNG/JPEG images"


def test_split_errors(tmp_path):
    touch(tmp_path, "train/a/1.png", "train/b/1.png", "test/zebra/1.png", "test/a/1.png")
    assert error_of(tmp_path) == (f"'{tmp_path / 'test'}' has class folder 'zebra' that the "
                                  "training split lacks")
    (tmp_path / "test/zebra/1.png").unlink()
    (tmp_path / "test/zebra").rmdir()
    (tmp_path / "test/b").mkdir()
    assert error_of(tmp_path) == f"class folder '{tmp_path / 'test' / 'b'}' has no PNG/JPEG images"
    touch(tmp_path, "test/b/1.png")
    (tmp_path / "val").mkdir()
    assert error_of(tmp_path) == (f"no class folders in '{tmp_path / 'val'}' (expected one "
                                  "sub-folder of images per class)")
    (tmp_path / "val").rmdir()
    assert index_folder(tmp_path).splits["test"][1] == [0, 1]


# --- files that are not regular -----------------------------------------------------------


def test_a_fifo_is_refused_at_once(tmp_path):
    touch(tmp_path, "a/ok.png", "b/ok.png", "b/zz.png")
    os.mkfifo(tmp_path / "b" / "pipe.png")
    result = {}

    def run():
        try:
            index_folder(tmp_path)
        except CnnDslError as e:
            result["msg"] = e.message

    start = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive() and time.monotonic() - start < 5
    assert result["msg"] == (f"'{tmp_path / 'b' / 'pipe.png'}' is not a regular file (a FIFO): "
                             "cnndsl reads data only from regular files")


def test_devices_folders_and_dangling_links_are_refused(tmp_path):
    touch(tmp_path, "a/ok.png")
    (tmp_path / "a" / "null.png").symlink_to("/dev/null")
    assert error_of(tmp_path) == (f"'{tmp_path / 'a' / 'null.png'}' is not a regular file (a "
                                  "character device): cnndsl reads data only from regular files")
    (tmp_path / "a" / "null.png").unlink()
    (tmp_path / "a" / "folder.jpg").mkdir()
    assert "(a directory)" in error_of(tmp_path)
    (tmp_path / "a" / "folder.jpg").rmdir()
    (tmp_path / "a" / "dangling.png").symlink_to(tmp_path / "gone.png")
    assert error_of(tmp_path) == (f"cannot read '{tmp_path / 'a' / 'dangling.png'}': "
                                  "No such file or directory")


def test_the_first_bad_entry_by_name_is_named(tmp_path):
    touch(tmp_path, "a/ok.png")
    for name in ("m.png", "c.png", "x.png"):
        os.mkfifo(tmp_path / "a" / name)
    assert "c.png" in error_of(tmp_path)


def test_symlinks_to_files_and_class_folders_are_followed(tmp_path):
    touch(tmp_path / "elsewhere", "real.png", "cls/one.png")
    touch(tmp_path / "data", "a/x.png")
    (tmp_path / "data/a/link.png").symlink_to(tmp_path / "elsewhere/real.png")
    (tmp_path / "data/b").symlink_to(tmp_path / "elsewhere/cls")
    idx = index_folder(tmp_path / "data")
    assert idx.class_names == ["a", "b"]
    assert idx.splits["train"] == ([str(tmp_path / "data" / n) for n in ("a/link.png", "a/x.png", "b/one.png")],
                                   [0, 0, 1])


# --- the cache ---------------------------------------------------------------------------


def cache_path(cache: Path, root: Path) -> Path:
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return cache / f"folder-index-{digest}.json"


def make_tree(root: Path) -> None:
    touch(root, "cat/1.png", "cat/2.png", "dog/1.jpg", "emu/a.jpeg")
    age(root)


def test_the_cache_is_written_and_reused(tmp_path, scandirs):
    make_tree(tmp_path / "data")
    scandirs.clear()   # age() walked the tree
    first = index_folder(tmp_path / "data", cache_dir=tmp_path / "cache")
    written = cache_path(tmp_path / "cache", tmp_path / "data")
    assert written.is_file() and json.loads(written.read_text())["version"] == 1
    assert os.listdir(tmp_path / "cache") == [written.name]    # no temp file left behind
    assert len(scandirs) == 1 + 3    # the root, then each class folder
    scandirs.clear()
    again = index_folder(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert again == first
    assert scandirs == [str(tmp_path / "data")]   # only the structure is listed again


def test_the_cache_serves_another_spelling_of_the_root(tmp_path, monkeypatch, scandirs):
    make_tree(tmp_path / "data")
    index_folder(tmp_path / "data", cache_dir=tmp_path / "cache")
    monkeypatch.chdir(tmp_path)
    scandirs.clear()
    idx = index_folder("data", cache_dir=tmp_path / "cache")
    assert len(scandirs) == 1
    assert idx.splits["train"][0][0] == os.path.join("data", "cat", "1.png")


def test_the_cache_follows_added_and_removed_files(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    make_tree(root)
    index_folder(root, cache_dir=cache)
    touch(root, "dog/2.png")
    assert index_folder(root, cache_dir=cache).splits["train"][0].count(str(root / "dog/2.png")) == 1
    age(root, DAY // 2)
    (root / "cat/1.png").unlink()
    paths, labels = index_folder(root, cache_dir=cache).splits["train"]
    assert str(root / "cat/1.png") not in paths and len(paths) == len(labels) == 4
    touch(root, "fox/1.png")
    assert index_folder(root, cache_dir=cache).class_names == ["cat", "dog", "emu", "fox"]


def test_a_folder_being_written_is_not_cached(tmp_path):
    touch(tmp_path / "data", "a/1.png")   # mtimes: now
    index_folder(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert not cache_path(tmp_path / "cache", tmp_path / "data").exists()
    age(tmp_path / "data")
    index_folder(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert cache_path(tmp_path / "cache", tmp_path / "data").exists()


def test_the_split_layout_is_cached(tmp_path, scandirs):
    touch(tmp_path / "data", "train/a/1.png", "train/b/1.png", "test/b/2.png", "val/a/3.png")
    age(tmp_path / "data")
    first = index_folder(tmp_path / "data", cache_dir=tmp_path / "cache")
    scandirs.clear()
    assert index_folder(tmp_path / "data", cache_dir=tmp_path / "cache") == first
    assert len(scandirs) == 3 and first.splits["test"] == ([str(tmp_path / "data/test/b/2.png")], [1])


@pytest.mark.parametrize("content", [
    b"", b"\x00\xff garbage", b"[]", b"null", b"[" * 100_000,
    b'{"version": 1, "root": 5, "key": [], "files": {}}',
])
def test_a_corrupt_cache_is_ignored_and_rewritten(tmp_path, scandirs, content):
    make_tree(tmp_path / "data")
    cached = cache_path(tmp_path / "cache", tmp_path / "data")
    cached.parent.mkdir()
    cached.write_bytes(content)
    scandirs.clear()   # age() walked the tree
    idx = index_folder(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert idx.class_names == ["cat", "dog", "emu"] and len(scandirs) == 4
    assert json.loads(cached.read_text())["version"] == 1


def tampered(tmp_path, change) -> tuple[FolderIndex, list]:
    make_tree(tmp_path / "data")
    index_folder(tmp_path / "data", cache_dir=tmp_path / "cache")
    cached = cache_path(tmp_path / "cache", tmp_path / "data")
    payload = json.loads(cached.read_text())
    change(payload)
    cached.write_text(json.dumps(payload))
    return index_folder(tmp_path / "data", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("change", [
    lambda p: p["files"]["train"][0].append("../../../etc/passwd.png"),   # a path, not a name
    lambda p: p["files"]["train"][0].reverse(),                           # not sorted
    lambda p: p["files"]["train"][1].clear(),                             # a class with no files
    lambda p: p["files"]["train"].pop(),                                  # a class missing
    lambda p: p["files"]["train"][0].append(7),                           # not a string
    lambda p: p["files"].update(test=[[], [], []]),                       # a split that isn't there
    lambda p: p.update(key=[["", 1]]),                                    # another tree's key
    lambda p: p.update(version=2),
])
def test_a_hostile_cache_is_not_trusted(tmp_path, change):
    idx = tampered(tmp_path, change)
    paths, labels = idx.splits["train"]
    assert paths == [str(tmp_path / "data" / n) for n in ("cat/1.png", "cat/2.png", "dog/1.jpg", "emu/a.jpeg")]
    assert labels == [0, 0, 1, 2]


def test_an_oversized_or_special_cache_file_is_not_read(tmp_path, monkeypatch, scandirs):
    make_tree(tmp_path / "data")
    index_folder(tmp_path / "data", cache_dir=tmp_path / "cache")
    monkeypatch.setattr(folder_index, "MAX_CACHE_BYTES", 64)
    scandirs.clear()
    index_folder(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert len(scandirs) == 4    # re-indexed
    cached = cache_path(tmp_path / "cache", tmp_path / "data")
    cached.unlink()
    os.mkfifo(cached)            # would block a plain open() forever
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        idx=index_folder(tmp_path / "data", cache_dir=tmp_path / "cache")), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive() and result["idx"].class_names == ["cat", "dog", "emu"]


def test_an_unwritable_cache_dir_is_only_slower(tmp_path):
    make_tree(tmp_path / "data")
    touch(tmp_path, "not-a-folder")
    idx = index_folder(tmp_path / "data", cache_dir=tmp_path / "not-a-folder")
    assert idx.class_names == ["cat", "dog", "emu"]


# --- speed ---------------------------------------------------------------------------------


def test_twenty_thousand_files_index_in_seconds(tmp_path):
    root = tmp_path / "big"
    for c in range(10):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(2000):
            open(folder / f"img{i:05d}.jpg", "wb").close()
    age(root)
    start = time.perf_counter()
    idx = index_folder(root, cache_dir=tmp_path / "cache")
    fresh = time.perf_counter() - start
    start = time.perf_counter()
    again = index_folder(root, cache_dir=tmp_path / "cache")
    cached = time.perf_counter() - start
    print(f"20,000 files: indexed in {fresh:.3f} s, from the cache in {cached:.3f} s")
    assert len(idx.splits["train"][0]) == 20_000 and idx.splits["train"][1][-1] == 9
    assert again == idx
    assert fresh < 20    # generous: a shared CI machine; it takes ~0.1 s
