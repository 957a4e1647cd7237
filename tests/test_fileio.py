"""nmfseg.fileio: atomic writes keep the old file on failure, leave no temporary files, and
give new files the mode a plain open() would."""

from __future__ import annotations

import os
import stat

import pytest

from nmfseg.errors import DataError
from nmfseg.fileio import (
    StagedFiles,
    atomic_open,
    atomic_path,
    read_json,
    write_bytes,
    write_json,
    write_text,
)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_get_the_mode_of_a_plain_open(tmp_path, umask_022):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    write_text(tmp_path / "atomic.txt", "x")
    with StagedFiles(tmp_path) as staged:
        staged.write_text("staged.txt", "x")
        staged.commit()
    assert _mode(plain) == 0o644
    assert _mode(tmp_path / "atomic.txt") == _mode(plain)
    assert _mode(tmp_path / "staged.txt") == _mode(plain)


def test_a_stricter_umask_is_respected(tmp_path):
    old = os.umask(0o077)
    try:
        write_bytes(tmp_path / "private.bin", b"1")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "private.bin") == 0o600


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "ckpt.pt"
    write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_the_temporary_keeps_the_ending_and_the_folder_is_created(tmp_path):
    target = tmp_path / "new" / "case.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith("-case.nii.gz")
        assert tmp.name.startswith(".")
        tmp.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data"


def test_atomic_open_refuses_read_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"), atomic_open(tmp_path / "x", "rb"):
        pass


def test_staged_files_appear_together_or_not_at_all(tmp_path):
    with pytest.raises(KeyError), StagedFiles(tmp_path) as staged:
        staged.write_text("a.csv", "a")
        staged.write_text("b.json", "{}")
        raise KeyError("failure before the commit")
    assert list(tmp_path.iterdir()) == []
    with StagedFiles(tmp_path) as staged:
        staged.write_text("a.csv", "a")
        staged.path("c.png").write_bytes(b"png")
        written = staged.commit()
    assert [p.name for p in written] == ["a.csv", "c.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "c.png"]


def test_json_round_trip_and_errors_name_the_file(tmp_path):
    write_json(tmp_path / "m.json", {"a": [1, 2]})
    assert read_json(tmp_path / "m.json") == {"a": [1, 2]}
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(DataError, match=r"bad\.json: cannot read JSON"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(DataError, match="must hold a JSON object"):
        read_json(tmp_path / "list.json")
    with pytest.raises(DataError, match=r"missing\.json"):
        read_json(tmp_path / "missing.json")
