"""The read cache (registry/readcache.py): used only for exactly the bytes on disk, never stale."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bbenroll.registry import readcache, schema, store

# another process rewrites one worker's note in place: same inode, same size, and the old mtime back
SAME_SIZE_EDIT = """
import os, sys
path, old, new = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
assert len(old) == len(new)
before = os.stat(path)
with open(path, "r+b") as f:
    data = f.read()
    assert data.count(old) == 1
    f.seek(0)
    f.write(data.replace(old, new))
os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
after = os.stat(path)
assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
"""


def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the full parses of registry text from now on (a cache hit makes none)."""
    calls: list[str] = []
    real = store.parse_text

    def counting(text: str, where: str) -> dict:
        calls.append(where)
        return real(text, where)

    monkeypatch.setattr(store, "parse_text", counting)
    return calls


def fresh(path: Path) -> tuple[object, object]:
    """What a parse of the file gives, without any cache."""
    text = path.read_text(encoding="utf-8")
    data = store.parse_text(text, str(path))
    return store.registry_from_text(path, text), schema.audit_from_data(data.get("audit"), schema.Problems())


def test_a_read_leaves_a_private_cache_and_the_next_read_parses_nothing(reg_path, cli, monkeypatch):
    cli("add", "w1", "--note", "first")
    readcache.cache_path(reg_path).unlink()
    first = store.load(reg_path)
    cache = readcache.cache_path(reg_path)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    calls = parses(monkeypatch)
    second = store.load(reg_path)
    assert calls == []
    assert second.registry == first.registry and second.audit == first.audit
    assert second.text == first.text and second.registry.workers["w1"].note == "first"


def test_an_edit_caches_exactly_what_a_parse_of_the_new_file_gives(reg_path, cli, monkeypatch):
    cli("add", "w1")
    cli("add", "w2", "--tag", "linux")
    calls = parses(monkeypatch)
    loaded = store.load(reg_path)
    assert calls == []  # the edit's own cache: its next read needs no parse
    monkeypatch.undo()
    assert (loaded.registry, loaded.audit) == fresh(reg_path)
    assert loaded.audit is not None and loaded.audit.count == 3  # init, add, add


def test_another_process_editing_in_place_with_the_same_size_and_mtime_is_seen(reg_path, cli):
    cli("add", "w1", "--note", "aaaa")
    assert json.loads(cli("list", "--json").out)[0]["note"] == "aaaa"  # cached now
    subprocess.run([sys.executable, "-c", SAME_SIZE_EDIT, str(reg_path), '"aaaa"', '"bbbb"'], check=True)
    assert json.loads(cli("list", "--json").out)[0]["note"] == "bbbb"
    assert store.load(reg_path).registry.workers["w1"].note == "bbbb"


def test_the_same_stat_signature_with_other_bytes_is_a_miss(reg_path, cli):
    """What the digest is for: a coarse file system clock can leave size, mtime and ctime all equal."""
    cli("add", "w1")
    text = reg_path.read_bytes()
    st = os.stat(reg_path)
    registry, head = fresh(reg_path)
    readcache.store(reg_path, readcache.key_of(st, text), registry, head)
    assert readcache.lookup(reg_path, readcache.key_of(st, text)) == (registry, head)
    same_size = text.replace(b"w1", b"w9")
    assert same_size != text and len(same_size) == len(text)
    assert readcache.lookup(reg_path, readcache.key_of(st, same_size)) is None


def test_a_new_inode_or_ctime_is_a_miss(reg_path, cli):
    cli("add", "w1")
    data = reg_path.read_bytes()
    st = os.stat(reg_path)
    key = readcache.key_of(st, data)
    assert readcache.lookup(reg_path, key) is not None
    for index in (1, 4):  # st_ino, st_ctime_ns
        changed = list(key.signature)
        changed[index] += 1
        moved = readcache.Key(tuple(changed), key.digest, key.code)  # type: ignore[arg-type]
        assert readcache.lookup(reg_path, moved) is None


def test_a_cache_readable_by_others_is_not_used(reg_path, cli, monkeypatch):
    cli("add", "w1")
    cache = readcache.cache_path(reg_path)
    cache.chmod(0o640)
    calls = parses(monkeypatch)
    store.load(reg_path)
    assert calls == [str(reg_path)]
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600  # and replaced by a private one


class Planted:
    """What an attacker would pickle: unpickling it would run a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_never_runs(reg_path, cli, monkeypatch, tmp_path):
    cli("add", "w1")
    key = readcache.key_of(os.stat(reg_path), reg_path.read_bytes())
    marker = tmp_path / "ran"
    cache = readcache.cache_path(reg_path)
    payload = pickle.dumps((key.as_tuple(), Planted(marker), None))
    cache.write_bytes(readcache.MAGIC + hashlib.sha256(payload).digest() + payload)  # a valid checksum
    cache.chmod(0o600)
    assert readcache.lookup(reg_path, key) is None
    assert not marker.exists()
    assert store.load(reg_path).registry.workers["w1"].name == "w1"


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "zeroed", "not a tuple"])
def test_a_damaged_cache_is_a_miss(reg_path, cli, damage):
    cli("add", "w1")
    cache = readcache.cache_path(reg_path)
    good = cache.read_bytes()
    other = pickle.dumps(1)
    cache.write_bytes(
        {
            "empty": b"",
            "garbage": b"not a pickle",
            "truncated": good[: len(good) // 2],
            "zeroed": good[:-100] + bytes(100),  # what a crash can leave of a file not fsync'd
            "not a tuple": readcache.MAGIC + hashlib.sha256(other).digest() + other,
        }[damage]
    )
    key = readcache.key_of(os.stat(reg_path), reg_path.read_bytes())
    assert readcache.lookup(reg_path, key) is None
    assert store.load(reg_path).registry.workers["w1"].name == "w1"
    assert readcache.lookup(reg_path, readcache.key_of(os.stat(reg_path), reg_path.read_bytes())) is not None


def test_a_cache_that_cannot_be_written_is_no_error(reg_path, cli):
    cli("add", "w1")
    cache = readcache.cache_path(reg_path)
    cache.unlink()
    cache.mkdir()  # the rename onto it fails
    assert store.load(reg_path).registry.workers["w1"].name == "w1"
    assert cli("add", "w2").code == 0
    assert sorted(store.load(reg_path).registry.workers) == ["w1", "w2"]


def test_a_symlinked_registry_caches_beside_the_real_file_and_never_follows_a_planted_link(
    reg_path, cli, tmp_path
):
    cli("add", "w1")
    link_dir = tmp_path / "elsewhere"
    link_dir.mkdir()
    link = link_dir / "workers.toml"
    link.symlink_to(reg_path)
    (link_dir / "master.pem").symlink_to(reg_path.parent / "master.pem")  # named relative to the link
    readcache.cache_path(reg_path).unlink()
    store.load(link)
    assert readcache.cache_path(reg_path).is_file() and not readcache.cache_path(link).exists()
    target = tmp_path / "secret-looking"
    target.write_bytes(b"x")
    cache = readcache.cache_path(reg_path)
    cache.unlink()
    cache.symlink_to(target)
    key = readcache.key_of(os.stat(reg_path), reg_path.read_bytes())
    assert readcache.lookup(reg_path, key) is None
    store.load(reg_path)  # replaces the link with a file of its own
    assert target.read_bytes() == b"x" and not cache.is_symlink()


def test_identity_problems_are_checked_on_a_cache_hit(reg_path, cli):
    cli("add", "w1")
    store.load(reg_path)  # cached
    (reg_path.parent / "master.pem").unlink()
    with pytest.raises(store.RegistryError, match=r"master\.identity"):
        store.load(reg_path)


def test_check_always_parses(reg_path, cli, monkeypatch):
    cli("add", "w1")
    calls = parses(monkeypatch)
    assert store.check(reg_path) == []
    assert calls == [str(reg_path)]


def test_the_cache_is_written_without_fsync(reg_path, cli, monkeypatch):
    """Two fsyncs would cost a read 10-50 ms on a busy disk; the checksum makes a torn cache a miss."""
    from bbenroll import fileio

    cli("add", "w1")
    readcache.cache_path(reg_path).unlink()

    def no_fsync(fd: int) -> None:
        raise AssertionError("the read cache was fsync'd")

    monkeypatch.setattr(fileio.os, "fsync", no_fsync)
    store.load(reg_path)
    monkeypatch.undo()
    cache = readcache.cache_path(reg_path)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert readcache.lookup(reg_path, readcache.key_of(os.stat(reg_path), reg_path.read_bytes())) is not None
