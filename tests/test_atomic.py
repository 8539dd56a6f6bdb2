"""Atomic writes: a reader sees the old file or the new one, never half, and failures leave nothing behind."""

from __future__ import annotations

import pytest

from motorsearch.atomic import TEMPORARY_MARK, copy_folder, replacing, temporary_name, write_text


def test_a_file_is_replaced_in_one_step_and_the_parent_made(tmp_path):
    target = tmp_path / "deep" / "er" / "report.md"
    assert write_text(target, "first") == target and target.read_text() == "first"
    write_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.md"]


def test_a_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = write_text(tmp_path / "model.pt", "old")
    with pytest.raises(RuntimeError, match="disk full"):
        with replacing(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_a_folder_replaces_a_folder_and_a_failed_one_leaves_nothing(tmp_path):
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "state.pt").write_text("new state")
    target = tmp_path / "epoch_0003"
    target.mkdir()
    (target / "stale.txt").write_text("from an earlier run")
    copy_folder(source, target)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["sub", "sub/state.pt"]

    with pytest.raises(OSError):
        with replacing(tmp_path / "broken") as tmp:
            tmp.mkdir()
            (tmp / "half").write_text("x")
            raise OSError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0003", "source"]


def test_temporary_names_are_hidden_unique_and_marked(tmp_path):
    names = {temporary_name(tmp_path / "cache") for _ in range(50)}
    assert len(names) == 50
    assert all(n.parent == tmp_path and n.name.startswith(f".cache{TEMPORARY_MARK}") for n in names)
