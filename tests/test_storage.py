"""Interrupted work: caches resume after a kill, outputs are never half-written."""

import os

import pytest

from lit_sig import storage


def test_jsonl_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    storage.append_jsonl(path, [{"index": 0}])
    storage.append_jsonl(path, [{"index": 1}])
    path.write_bytes(path.read_bytes()[:-4])  # Killed while writing record 1.
    assert list(storage.read_jsonl(path)) == [{"index": 0}]
    storage.append_jsonl(path, [{"index": 1}])
    assert list(storage.read_jsonl(path)) == [{"index": 0}, {"index": 1}]


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"index": 0}\nnot json\n{"index": 2}\n')
    with pytest.raises(ValueError, match="cache.jsonl:2 is not valid JSON"):
        list(storage.read_jsonl(path))


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    storage.write_atomically(path, "old")

    def crash(*args):
        raise KeyboardInterrupt  # As if killed between writing and renaming.

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        storage.write_atomically(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]
