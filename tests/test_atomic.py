"""Tests for facefit.atomic: all-or-nothing file output with one-line errors."""
from __future__ import annotations

import errno
import os
import stat
import tempfile

import pytest

import facefit.atomic as atomic
from facefit.atomic import atomic_output_path, atomic_write
from facefit.errors import FacefitError

from conftest import chmod_is_effective


def _listing(directory):
    return sorted(p.name for p in directory.iterdir())


def _assert_one_line(exc_info):
    msg = str(exc_info.value)
    assert msg and "\n" not in msg


def test_write_bytes_and_text(tmp_path):
    target = tmp_path / "a.bin"
    with atomic_write(target) as f:
        f.write(b"\x00\x01hello")
        # nothing visible under the final name until the block ends
        assert not target.exists()
    assert target.read_bytes() == b"\x00\x01hello"
    with atomic_write(tmp_path / "b.txt", "w") as f:
        f.write("héllo\n")
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    assert _listing(tmp_path) == ["a.bin", "b.txt"]  # no temporary files left


def test_new_file_gets_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_existing_file_mode_is_kept(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    os.chmod(target, 0o640)
    with atomic_write(target, "w") as f:
        f.write("new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_exception_mid_write_leaves_no_file_and_no_temp(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as f:
            f.write(b"partial data")
            raise RuntimeError("boom")
    assert _listing(tmp_path) == []


def test_existing_file_not_clobbered_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("precious")
    with pytest.raises(KeyError):
        with atomic_write(target, "w") as f:
            f.write("half-written replacement")
            raise KeyError("x")
    assert target.read_text() == "precious"
    assert _listing(tmp_path) == ["out.txt"]


def test_missing_directory_is_a_one_line_facefit_error(tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "out.obj"
    with pytest.raises(FacefitError, match="does not exist") as exc_info:
        with atomic_write(target) as f:
            f.write(b"x")
    _assert_one_line(exc_info)
    assert not (tmp_path / "no").exists()


def test_mkdir_creates_parents(tmp_path):
    target = tmp_path / "new" / "dir" / "out.txt"
    with atomic_write(target, "w", mkdir=True) as f:
        f.write("ok")
    assert target.read_text() == "ok"


def test_target_is_directory(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(FacefitError, match="directory"):
        with atomic_write(tmp_path / "d") as f:
            f.write(b"x")


def test_exclusive_mode_refuses_existing(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("keep")
    with pytest.raises(FacefitError, match="already exists"):
        with atomic_write(target, "x") as f:
            f.write("new")
    assert target.read_text() == "keep"


def test_bad_mode_rejected(tmp_path):
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "a", "a"):
            pass


def test_read_only_directory(tmp_path, monkeypatch):
    """Real chmod for normal users; as root (chmod ineffective) simulate EACCES."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "old.png").write_bytes(b"old")
    real = chmod_is_effective(tmp_path)
    if real:
        ro.chmod(0o500)
    else:
        def denied(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", denied)
    try:
        for target in (ro / "new.png", ro / "old.png"):
            with pytest.raises(FacefitError, match="permission denied") as exc_info:
                with atomic_write(target) as f:
                    f.write(b"data")
            _assert_one_line(exc_info)
            with pytest.raises(FacefitError, match="permission denied"):
                with atomic_output_path(target) as tmp:
                    tmp.write_bytes(b"data")
    finally:
        ro.chmod(0o700)
    assert _listing(ro) == ["old.png"]
    assert (ro / "old.png").read_bytes() == b"old"


def test_read_only_filesystem_at_rename(tmp_path, monkeypatch):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def erofs(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.os, "replace", erofs)
    with pytest.raises(FacefitError, match="read-only file system") as exc_info:
        with atomic_write(target, "w") as f:
            f.write("new")
    _assert_one_line(exc_info)
    assert target.read_text() == "old"
    assert _listing(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full(tmp_path, monkeypatch, where):
    target = tmp_path / "big.bin"
    target.write_bytes(b"old")
    enospc = OSError(errno.ENOSPC, "No space left on device")
    if where == "fsync":
        def full(fd):
            raise enospc

        monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(FacefitError, match="no space left on device") as exc_info:
        with atomic_write(target) as f:
            f.write(b"x" * 1000)
            if where == "write":
                raise enospc  # what f.write raises when the disk fills up
    _assert_one_line(exc_info)
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["big.bin"]


def test_unrelated_oserror_in_block_is_not_rewrapped(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_write(tmp_path / "out.txt", "w"):
            open(tmp_path / "missing-input.txt").read()
    assert _listing(tmp_path) == []


def test_output_path_keeps_suffix_and_replaces(tmp_path):
    target = tmp_path / "video.mp4"
    target.write_bytes(b"old")
    with atomic_output_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.suffix == ".mp4"
        assert tmp != target and tmp.exists()
        tmp.write_bytes(b"new video")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new video"
    assert _listing(tmp_path) == ["video.mp4"]


def test_output_path_exception_cleans_up(tmp_path):
    target = tmp_path / "mesh.glb"
    target.write_bytes(b"old")
    with pytest.raises(ValueError):
        with atomic_output_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise ValueError("library failed")
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["mesh.glb"]


def test_output_path_nothing_written_is_an_error(tmp_path):
    target = tmp_path / "video.mp4"
    with pytest.raises(FacefitError, match="no data"):
        with atomic_output_path(target):
            pass  # e.g. a video writer that silently failed to open
    assert _listing(tmp_path) == []
    with atomic_output_path(target, allow_empty=True):
        pass
    assert target.exists() and target.stat().st_size == 0


def test_output_path_deleted_by_library(tmp_path):
    with pytest.raises(FacefitError, match="no data"):
        with atomic_output_path(tmp_path / "a.png") as tmp:
            tmp.unlink()
    assert _listing(tmp_path) == []


def test_remove_stale_temps_only_removes_our_temp_files(tmp_path):
    from facefit.atomic import remove_stale_temps

    (tmp_path / "checkpoint.pt").write_bytes(b"good")
    stale = tmp_path / ".checkpoint.pt.ab12cd_x.tmp.pt"
    stale.write_bytes(b"half")
    other = tmp_path / ".hidden"
    other.write_text("keep")
    user = tmp_path / ".notes.12345678.tmp.txt"  # suffix does not match its "target": not ours
    user.write_text("keep")
    removed = remove_stale_temps(tmp_path)
    assert removed == [stale]
    assert not stale.exists() and other.exists() and user.exists()
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"good"
    assert remove_stale_temps(tmp_path / "missing") == []
