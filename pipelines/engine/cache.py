"""Content-addressed generation cache shared by every trial and every run.

The key is the SHA-256 of everything that can change a generation: the model's identity,
the engine settings that change outputs, the exact prompt token ids, every sampling parameter
(seed included) and the sample index. The cache lives in one Ray actor pinned to the driver's
node, so trials and engines on other nodes need no shared disk and concurrent trials are
serialised by the actor.

Store: one SQLite database, ``<directory>/generations.sqlite3`` (standard library ``sqlite3``),
one ``WITHOUT ROWID`` table keyed by the generation key. Look-ups go through the primary-key
index, so memory is SQLite's page cache (bounded, ``cache_size``) whatever the entry count, and
opening it reads no entries: start time does not grow with the cache. The entry count is kept
in a ``meta`` row updated in the same transaction as the inserts, so ``stats()`` is O(1).

Durability: WAL journal with ``synchronous=NORMAL``. A transaction is in the WAL file (the OS
page cache) when ``put_many`` returns, so it survives the process being killed (SIGKILL, OOM
killer, Ray killing the actor). A power cut or kernel crash may roll back the last few
transactions but never corrupts the database; those generations are simply redone. That is
the right trade for a cache of regenerable outputs: ``synchronous=FULL`` would add an fsync per
``put_many`` for protection against power loss only (``bench/cache_store.py`` measures both).

Bad data costs only itself, with one ``logging.warning`` line: a row whose value is not UTF-8,
not JSON or not a record (``[]``, missing fields) is a miss and is deleted, so the next
generation replaces it. A file that is not an SQLite database at all is moved aside to
``generations.sqlite3.corrupt-<time>`` and a fresh one is started.

Older versions wrote append-only JSONL shards (``*.jsonl``) into the same directory. Each is
imported once at start (bad lines skipped, one warning per shard) and then renamed to
``*.jsonl.imported``, which is kept so that nothing is lost if it must be re-read by hand;
delete those files once the new cache works. A run killed mid-import leaves the shard named
``*.jsonl`` and imports it again next time; the insert ignores keys already present.

Persistent storage: the cache directory is ``$PROMPTSEARCH_CACHE/generations`` (default
``~/.cache/promptsearch/generations``) on the driver's (head) node, so it dies with that node.
To keep it, point ``PROMPTSEARCH_CACHE`` at a persistent local disk mounted on the head node
(an attached cloud volume, a local RAID): the same volume attached to a new head node gives
``--resume`` every generation. SQLite must not be on NFS, SMB or another network file system:
WAL needs shared memory and POSIX locks that those do not provide reliably, and the database
can be corrupted. A warning is logged when the directory looks like one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from promptsearch.pipelines.engine import telemetry

log = logging.getLogger(__name__)

Record = dict[str, Any]
"""``text``, ``prompt_tokens``, ``output_tokens``, ``finish_reason``."""

DB_NAME = "generations.sqlite3"
FIELDS = ("text", "prompt_tokens", "output_tokens", "finish_reason")
_BATCH = 500
"""Keys per ``IN (...)`` query: below SQLite's oldest variable limit (999)."""
_CACHE_KIB = 16 * 1024
"""SQLite's page cache, the bound on the store's own memory."""
_CORRUPT = (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)
"""Error codes meaning the file is not a usable database (as opposed to busy or read-only)."""
_NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb", "smb3", "smbfs", "9p", "afs",
                         "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "ceph", "glusterfs",
                         "fuse.glusterfs", "lustre", "gpfs"})


def generation_key(engine_key: dict[str, Any], token_ids: Sequence[int], sampling_key: str,
                   sample_index: int = 0) -> str:
    payload = json.dumps({"engine": engine_key, "prompt": list(token_ids),
                          "sampling": sampling_key, "sample": sample_index}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def decode_record(value: Any) -> Record | None:
    """A stored value as a record, or None if it is not one (bad UTF-8, JSON or shape)."""
    try:
        text = value.decode("utf-8") if isinstance(value, bytes) else value
        data = json.loads(text) if isinstance(text, str) else text
    except (UnicodeDecodeError, ValueError):
        return None
    return _checked(data)


def _checked(data: Any) -> Record | None:
    if not isinstance(data, dict):
        return None
    text, finish = data.get("text"), data.get("finish_reason")
    counts = [data.get("prompt_tokens"), data.get("output_tokens")]
    if not isinstance(text, str) or not (finish is None or isinstance(finish, str)):
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        return None
    return {field: data[field] for field in FIELDS}


def _encode(record: Record) -> bytes:
    return json.dumps({f: record[f] for f in FIELDS}, ensure_ascii=False).encode("utf-8")


class GenerationCache:
    """Ray actor body (``ray.remote`` applied by ``start_cache``); a plain object otherwise."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / DB_NAME
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        _warn_if_network_fs(self.directory)
        self._db = self._open()
        for shard in sorted(self.directory.glob("*.jsonl")):
            self._import_shard(shard)

    # -- opening -----------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            return _connect(self.path)
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", None) not in _CORRUPT:
                raise  # e.g. locked or read-only: the file itself may be fine
            aside = self.path.with_name(f"{DB_NAME}.corrupt-{int(time.time())}")
            log.warning("generation cache %s is unreadable (%s); moved it to %s and started an "
                        "empty cache", self.path, exc, aside.name)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self.path.rename(aside)
            return _connect(self.path)

    def _import_shard(self, shard: Path) -> None:
        """Copy a JSONL shard of the old store in; one warning for all its bad lines."""
        bad, first_bad = 0, 0
        rows: list[tuple[str, bytes]] = []
        added = 0
        with shard.open("rb") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                entry = _shard_entry(line)
                if entry is None:
                    bad += 1
                    first_bad = first_bad or number
                    continue
                rows.append(entry)
                if len(rows) >= 5000:
                    added += self._insert(rows)
                    rows = []
        added += self._insert(rows)
        if bad:
            log.warning("generation cache shard %s: skipped %d bad line(s) (first: line %d); "
                        "those generations will be redone", shard, bad, first_bad)
        with contextlib.suppress(FileNotFoundError):  # another process imported it just now
            shard.rename(shard.with_name(shard.name + ".imported"))
        log.info("generation cache: imported %d entries from %s", added, shard.name)

    # -- the actor interface -----------------------------------------------------------------

    def get_many(self, keys: Sequence[str]) -> list[Record | None]:
        found: dict[str, Record] = {}
        bad: list[str] = []
        with self._lock:
            for part in _batches(list(dict.fromkeys(keys))):
                marks = ",".join("?" * len(part))
                for key, value in self._db.execute(
                        f"SELECT key, record FROM generations WHERE key IN ({marks})", part):
                    record = decode_record(value)
                    if record is None:
                        bad.append(key)
                    else:
                        found[key] = record
            if bad:
                self._drop(bad)
        result = [found.get(k) for k in keys]
        hits = sum(r is not None for r in result)
        self.hits += hits
        self.misses += len(keys) - hits
        telemetry.CACHE_HITS.inc(hits)
        telemetry.CACHE_MISSES.inc(len(keys) - hits)
        return result

    def put_many(self, items: Sequence[tuple[str, Record]]) -> None:
        """Store new entries (an existing key is kept); committed when this returns."""
        with self._lock:
            self._insert([(key, _encode(record)) for key, record in items])

    def stats(self) -> dict[str, int]:
        with self._lock:
            (entries,) = self._db.execute(
                "SELECT value FROM meta WHERE name = 'entries'").fetchone()
        return {"entries": entries, "hits": self.hits, "misses": self.misses}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"GenerationCache({self.directory})"  # Ray's log prefix and dashboard "repr"

    # -- writing -----------------------------------------------------------------------------

    def _insert(self, rows: list[tuple[str, bytes]]) -> int:
        if not rows:
            return 0
        with _transaction(self._db):
            added = self._db.executemany(
                "INSERT OR IGNORE INTO generations (key, record) VALUES (?, ?)", rows).rowcount
            self._db.execute("UPDATE meta SET value = value + ? WHERE name = 'entries'",
                             (added,))
        return added

    def _drop(self, keys: list[str]) -> None:
        for key in keys:
            log.warning("generation cache %s: entry %s is corrupt; dropped, it will be "
                        "generated again", self.path, key)
        with _transaction(self._db):
            removed = self._db.executemany(
                "DELETE FROM generations WHERE key = ?", [(k,) for k in keys]).rowcount
            self._db.execute("UPDATE meta SET value = value - ? WHERE name = 'entries'",
                             (removed,))


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; writes use BEGIN IMMEDIATE below.
    db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            log.warning("generation cache %s: SQLite refused WAL mode (%s); is it on a network "
                        "file system?", path, mode)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        with _transaction(db):
            db.execute("CREATE TABLE IF NOT EXISTS generations "
                       "(key TEXT PRIMARY KEY, record BLOB NOT NULL) WITHOUT ROWID")
            db.execute("CREATE TABLE IF NOT EXISTS meta "
                       "(name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('entries', 0)")
    except BaseException:
        db.close()
        raise
    return db


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (takes the write lock up front: no upgrade deadlock
    between two processes sharing the cache), rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: Any, *_: Any) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _batches(keys: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(keys), _BATCH):
        yield keys[start:start + _BATCH]


def _shard_entry(line: bytes) -> tuple[str, bytes] | None:
    try:
        entry = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
        return None
    record = _checked(entry)
    return None if record is None else (entry["key"], _encode(record))


def _warn_if_network_fs(directory: Path) -> None:
    """SQLite in WAL mode on a network file system can corrupt the database: say so."""
    fstype = _filesystem_type(directory)
    if fstype in _NETWORK_FS or (fstype or "").startswith("nfs"):
        log.warning("generation cache %s is on a network file system (%s); SQLite must not be "
                    "on NFS/SMB: set PROMPTSEARCH_CACHE to a local persistent disk", directory,
                    fstype)


def _filesystem_type(directory: Path) -> str | None:
    """The type of the mount holding ``directory`` (Linux ``/proc/self/mounts``)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    target, best, kind = str(directory.resolve()), -1, None
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, kind = len(point), parts[2]
    return kind


def start_cache(directory: str | Path) -> Any:
    """The cache actor, on this (the driver's) node, whose disk holds the database."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(GenerationCache).options(
        name=telemetry.actor_name("generation-cache"), num_cpus=0, max_concurrency=1,
        max_restarts=-1, max_task_retries=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
    ).remote(str(directory))
    ray.get(actor.stats.remote())
    return actor
