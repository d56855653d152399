"""The generation cache's SQLite store (issue 12 §3), used as a plain object: no Ray, no engine."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from promptsearch.pipelines.engine import cache as cache_module
from promptsearch.pipelines.engine.cache import DB_NAME, GenerationCache, generation_key

REPO = Path(__file__).resolve().parents[1]


def _record(text: str = "答え", tokens: int = 3) -> dict:
    return {"text": text, "prompt_tokens": 5, "output_tokens": tokens, "finish_reason": "stop"}


def _key(n: int) -> str:
    return generation_key({"model": "m"}, [n], "{}")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_round_trip_counts_and_survives_reopening(tmp_path: Path) -> None:
    cache = GenerationCache(str(tmp_path))
    cache.put_many([(_key(1), _record("一")), (_key(2), _record("二"))])
    cache.put_many([(_key(1), _record("別"))])  # an existing key is kept, not counted twice
    assert cache.get_many([_key(1), _key(3), _key(1)]) == [_record("一"), None, _record("一")]
    assert cache.stats() == {"entries": 2, "hits": 2, "misses": 1}
    cache.close()
    again = GenerationCache(str(tmp_path))
    assert again.get_many([_key(2)]) == [_record("二")]
    assert again.stats()["entries"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(DB_NAME)) == []


def test_starting_twice_creates_no_new_file(tmp_path: Path) -> None:
    GenerationCache(str(tmp_path)).close()
    before = sorted(p.name for p in tmp_path.iterdir())
    GenerationCache(str(tmp_path)).close()
    GenerationCache(str(tmp_path)).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / DB_NAME).is_file()
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_more_keys_than_one_query_holds(tmp_path: Path) -> None:
    cache = GenerationCache(str(tmp_path))
    cache.put_many([(_key(i), _record(str(i))) for i in range(2500)])
    got = cache.get_many([_key(i) for i in range(2600)])
    assert [r["text"] for r in got[:2500] if r] == [str(i) for i in range(2500)]
    assert got[2500:] == [None] * 100
    assert cache.stats()["entries"] == 2500


@pytest.mark.parametrize("value", [b"[]", b"{not json", "答え".encode()[:-1], b'{"text": 1}',
                                   json.dumps({**_record(), "output_tokens": -1}).encode()])
def test_a_corrupt_row_costs_that_entry_only(tmp_path: Path, value: bytes,
                                             caplog: pytest.LogCaptureFixture) -> None:
    cache = GenerationCache(str(tmp_path))
    cache.put_many([(_key(1), _record("good")), (_key(2), _record("soon bad"))])
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("UPDATE generations SET record = ? WHERE key = ?", (value, _key(2)))
    caplog.set_level(logging.WARNING)
    assert cache.get_many([_key(1), _key(2)]) == [_record("good"), None]
    assert len(_warnings(caplog)) == 1 and _key(2) in _warnings(caplog)[0]
    cache.put_many([(_key(2), _record("redone"))])  # the bad row was dropped: it can be redone
    assert cache.get_many([_key(2)]) == [_record("redone")]
    assert cache.stats()["entries"] == 2
    assert len(_warnings(caplog)) == 1


def test_extra_fields_in_a_record_are_not_returned(tmp_path: Path) -> None:
    """The pool builds ``Generation(**record)``: an unknown field would be a TypeError."""
    cache = GenerationCache(str(tmp_path))
    cache.put_many([(_key(1), {**_record(), "seconds": 1.5})])
    assert cache.get_many([_key(1)]) == [_record()]


def test_old_jsonl_shards_are_imported_once_skipping_bad_lines(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = [json.dumps({"key": _key(i), **_record(f"行{i}")}, ensure_ascii=False).encode()
            for i in range(3)]
    cut = json.dumps({"key": _key(9), **_record("切れた")}, ensure_ascii=False).encode()
    cut = cut[:cut.index("切".encode()) + 2]  # a UTF-8 sequence cut by a kill
    (tmp_path / "host-1-1.jsonl").write_bytes(b"\n".join([good[0], b"[]", good[1], b"", cut]))
    (tmp_path / "host-2-2.jsonl").write_bytes(good[2] + b"\n" + b'{"key": 3}\n')
    caplog.set_level(logging.WARNING)
    cache = GenerationCache(str(tmp_path))
    assert [r and r["text"] for r in cache.get_many([_key(0), _key(1), _key(2), _key(9)])] == \
        ["行0", "行1", "行2", None]
    warnings = _warnings(caplog)
    assert len(warnings) == 2, warnings  # one per shard with bad lines
    assert "host-1-1.jsonl: skipped 2 bad line(s) (first: line 2)" in warnings[0]
    assert "host-2-2.jsonl: skipped 1 bad line(s) (first: line 2)" in warnings[1]
    assert sorted(p.name for p in tmp_path.glob("*.jsonl*")) == [
        "host-1-1.jsonl.imported", "host-2-2.jsonl.imported"]
    cache.close()
    caplog.clear()
    again = GenerationCache(str(tmp_path))
    assert again.stats()["entries"] == 3 and _warnings(caplog) == []


def test_a_file_that_is_not_a_database_is_moved_aside(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not SQLite" * 100)
    caplog.set_level(logging.WARNING)
    cache = GenerationCache(str(tmp_path))
    cache.put_many([(_key(1), _record())])
    assert cache.get_many([_key(1)]) == [_record()]
    assert len(_warnings(caplog)) == 1 and "moved it to" in _warnings(caplog)[0]
    assert len(list(tmp_path.glob(f"{DB_NAME}.corrupt-*"))) == 1


def test_committed_entries_survive_sigkill(tmp_path: Path) -> None:
    """put_many returned => the entries are on disk, even if the process dies at once."""
    script = textwrap.dedent(f"""
        import os, signal
        from promptsearch.pipelines.engine.cache import GenerationCache, generation_key
        cache = GenerationCache({str(tmp_path)!r})
        for i in range(50):
            cache.put_many([(generation_key({{"model": "m"}}, [i], "{{}}"),
                             {{"text": "t%d" % i, "prompt_tokens": 1, "output_tokens": 1,
                               "finish_reason": "stop"}})])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=120)
    assert result.returncode == -9
    cache = GenerationCache(str(tmp_path))
    assert cache.stats()["entries"] == 50
    assert [r and r["text"] for r in cache.get_many([_key(i) for i in range(50)])] == \
        [f"t{i}" for i in range(50)]


def test_a_network_file_system_is_warned_about(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(cache_module, "_filesystem_type", lambda _: "nfs4")
    caplog.set_level(logging.WARNING)
    GenerationCache(str(tmp_path)).close()
    assert len(_warnings(caplog)) == 1 and "must not be on NFS" in _warnings(caplog)[0]


def test_the_mount_of_a_directory_is_found() -> None:
    assert cache_module._filesystem_type(Path("/proc")) == "proc"
