"""Result files survive a power cut: the bytes reach the disk before the name points at them, and the folder's new
entry reaches it before the write returns (and so before the store marks the job done)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bot.jobs.files import ResultFiles


class DiskCalls:
    """Records os.fsync and os.replace in order: ("fsync", "file"|"folder", inode) and ("replace", source, target)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, fail_on: str | None = None) -> None:
        self.calls: list[tuple] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            status = os.fstat(fd)
            kind = "folder" if stat.S_ISDIR(status.st_mode) else "file"
            self.calls.append(("fsync", kind, status.st_ino))
            if fail_on == f"fsync {kind}":
                raise OSError(5, "Input/output error")
            real_fsync(fd)

        def replace(source, target, **kwargs) -> None:
            self.calls.append(("replace", Path(source), Path(target)))
            if fail_on == "replace":
                raise OSError(28, "No space left on device")
            real_replace(source, target, **kwargs)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)


def test_the_file_is_synced_before_the_rename_and_its_folder_after(tmp_path, monkeypatch):
    files = ResultFiles(tmp_path)
    (tmp_path / "results" / "ab").mkdir(parents=True)
    disk = DiskCalls(monkeypatch)

    files.write("results/ab/abc.png", b"png bytes")

    target = tmp_path / "results" / "ab" / "abc.png"
    assert target.read_bytes() == b"png bytes"
    assert disk.calls == [
        ("fsync", "file", target.stat().st_ino),
        ("replace", target.with_name("abc.png.partial"), target),
        ("fsync", "folder", target.parent.stat().st_ino),
    ]


def test_new_folders_are_synced_into_their_parents(tmp_path, monkeypatch):
    files = ResultFiles(tmp_path)
    disk = DiskCalls(monkeypatch)

    files.save_result("abcdef", b"png", b"npz")

    folders = [call[2] for call in disk.calls if call[:2] == ("fsync", "folder")]
    bucket = tmp_path / "results" / "ab"
    # Each created folder's entry in its parent, then (once per file) the bucket's entries.
    assert folders[:2] == [tmp_path.stat().st_ino, (tmp_path / "results").stat().st_ino]
    assert folders[2:] == [bucket.stat().st_ino] * 2
    assert sorted(path.name for path in bucket.iterdir()) == ["abcdef.latents.npz", "abcdef.png"]


@pytest.mark.parametrize("failure", ["fsync file", "replace"])
def test_a_failed_write_leaves_neither_a_partial_file_nor_the_target(tmp_path, monkeypatch, failure):
    files = ResultFiles(tmp_path)
    DiskCalls(monkeypatch, fail_on=failure)

    with pytest.raises(OSError):
        files.write("challenges/3/abc.png", b"png bytes")

    assert list((tmp_path / "challenges" / "3").iterdir()) == []
    assert not files.exists("challenges/3/abc.png")


def test_a_failed_write_keeps_the_file_it_was_replacing(tmp_path, monkeypatch):
    files = ResultFiles(tmp_path)
    files.write("results/ab/abc.png", b"first")
    DiskCalls(monkeypatch, fail_on="fsync file")

    with pytest.raises(OSError):
        files.write("results/ab/abc.png", b"second")

    assert files.read("results/ab/abc.png") == b"first"
    assert [path.name for path in (tmp_path / "results" / "ab").iterdir()] == ["abc.png"]
