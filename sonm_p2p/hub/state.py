"""The hub's persistent state: tasks and the miners it has seen, in SQLite.

One file, ``hub.db`` in the hub's directory, in WAL mode with ``synchronous=FULL``: every write
is its own committed transaction, so neither a crash of the hub nor of the machine loses what a
call already returned for. The schema version lives in ``PRAGMA user_version``; opening a file
runs the migrations it lacks, and refuses one written by a newer sonm-p2p.

Threads: :class:`HubState` holds one connection (``check_same_thread=False``) behind one lock,
so gRPC worker threads may call it freely; each call is one short statement, so the lock is
never held for long.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sonm_p2p.errors import ConfigError, MinerNotFound, TaskNotFound
from sonm_p2p.tasks import TERMINAL_STATES, Endpoint, Task, TaskState

__all__ = ["DB_FILE", "SCHEMA_VERSION", "HubState", "MinerRecord"]

#: Name of the database file inside the hub's directory.
DB_FILE = "hub.db"
#: ``PRAGMA user_version`` of the schema this module writes.
SCHEMA_VERSION = 1

# _MIGRATIONS[n] takes a database from version n to n + 1. Append, never edit.
_MIGRATIONS: list[tuple[str, ...]] = [
    (
        """
        CREATE TABLE tasks (
            task_id      TEXT PRIMARY KEY,
            miner_id     TEXT NOT NULL,
            image        TEXT NOT NULL,
            owner        TEXT NOT NULL,
            state        TEXT NOT NULL,
            endpoints    TEXT NOT NULL,     -- JSON list of Endpoint objects
            exit_code    INTEGER,
            error        TEXT NOT NULL,
            created_at   REAL NOT NULL,
            updated_at   REAL NOT NULL,
            container_id TEXT NOT NULL
        )
        """,
        "CREATE INDEX tasks_by_created ON tasks (created_at, task_id)",
        "CREATE INDEX tasks_by_miner ON tasks (miner_id, created_at)",
        """
        CREATE TABLE miners (
            node_id     TEXT PRIMARY KEY,
            peer_id     TEXT NOT NULL,
            first_seen  REAL NOT NULL,
            last_seen   REAL NOT NULL,
            online      INTEGER NOT NULL,
            resources   TEXT NOT NULL,      -- JSON object
            remote_addr TEXT NOT NULL
        )
        """,
    ),
]
assert len(_MIGRATIONS) == SCHEMA_VERSION

_TASK_COLUMNS = (
    "task_id, miner_id, image, owner, state, endpoints, exit_code, error, "
    "created_at, updated_at, container_id"
)
_MINER_COLUMNS = "node_id, peer_id, online, first_seen, last_seen, resources, remote_addr"


@dataclass(frozen=True)
class MinerRecord:
    """What the hub remembers of a miner. Times are unix seconds.

    ``resources`` is the miner's self-description (JSON-serialisable; treat it as read-only).
    """

    node_id: str
    peer_id: str
    online: bool
    first_seen: float
    last_seen: float
    resources: dict[str, Any] = field(default_factory=dict, hash=False)
    remote_addr: str = ""

    def __repr__(self) -> str:
        status = "online" if self.online else "offline"
        return f"<MinerRecord {self.node_id[:10]}… {status} {self.remote_addr or '-'}>"


class HubState:
    """Tasks and miners, persisted in ``<directory>/hub.db``, or in memory.

    ``HubState(directory)`` creates the directory and the file if missing; ``HubState(":memory:")``
    keeps everything in memory (tests). Raises :class:`~sonm_p2p.errors.ConfigError`, naming the
    file, when it cannot be opened, is not a database, or has a newer schema.

    Every method is thread-safe and commits before it returns. :meth:`close` is idempotent;
    any other call after it raises ``RuntimeError``. Also a context manager that closes.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        if str(directory) == ":memory:":
            self.path: str = ":memory:"
        else:
            path = Path(directory) / DB_FILE
            self.path = str(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            if self.path != ":memory:":
                Path(directory).mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; _write() opens them explicitly.
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            if self.path != ":memory:":
                os.chmod(self.path, 0o600)  # owners and tasks: the hub's business only
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(f"{self.path}: cannot open the hub state: {e}") from e
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            # FULL, not WAL's usual NORMAL: a power cut must not undo a committed write either.
            conn.execute("PRAGMA synchronous = FULL")
            self._conn = conn
            self._migrate()
        except sqlite3.Error as e:
            conn.close()
            self._conn = None
            raise ConfigError(f"{self.path}: cannot open the hub state: {e}") from e
        except ConfigError:
            conn.close()
            self._conn = None
            raise

    # --- plumbing -----------------------------------------------------------------------------

    def _migrate(self) -> None:
        # The version is read inside the write transaction: two processes opening one file
        # at once cannot both migrate it.
        with self._write() as conn:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path}: hub state has schema version {version}, newer than this "
                    f"sonm-p2p understands ({SCHEMA_VERSION}); upgrade sonm-p2p"
                )
            for v in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[v]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise RuntimeError("HubState is closed")
            yield self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction, committed on success and rolled back on error."""
        with self._read() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @property
    def journal_mode(self) -> str:
        """SQLite's journal mode: ``"wal"`` for a file (``"memory"`` for ``":memory:"``)."""
        with self._read() as conn:
            return conn.execute("PRAGMA journal_mode").fetchone()[0]

    @property
    def schema_version(self) -> int:
        """The database's ``PRAGMA user_version``."""
        with self._read() as conn:
            return conn.execute("PRAGMA user_version").fetchone()[0]

    # --- tasks --------------------------------------------------------------------------------

    def put_task(self, task: Task) -> None:
        """Insert ``task``, or replace the stored task with the same ``task_id``."""
        row = _task_to_row(task)
        with self._write() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO tasks ({_TASK_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                row,
            )

    def get_task(self, task_id: str) -> Task:
        """The task with exactly ``task_id``; :class:`~sonm_p2p.errors.TaskNotFound` if none."""
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)
            ).fetchone()
        if row is None:
            raise TaskNotFound(f"no task with ID {task_id!r}")
        return _task_from_row(row)

    def list_tasks(
        self,
        miner_id: str | None = None,
        *,
        active_only: bool = False,
        after: tuple[float, str] | None = None,
        limit: int | None = None,
    ) -> list[Task]:
        """Tasks, oldest first; only ``miner_id``'s when given (exact node ID).

        ``active_only`` leaves out terminal tasks (EXITED, FAILED, STOPPED); LOST ones stay.
        ``after`` (a task's ``(created_at, task_id)``) and ``limit`` page through them.
        """
        where: list[str] = []
        args: list[object] = []
        if after is not None:
            where.append("(created_at, task_id) > (?, ?)")
            args.extend(after)
        if miner_id is not None:
            where.append("miner_id = ?")
            args.append(miner_id)
        if active_only:
            terminal = sorted(s.value for s in TERMINAL_STATES)
            where.append(f"state NOT IN ({','.join('?' * len(terminal))})")
            args.extend(terminal)
        sql = f"SELECT {_TASK_COLUMNS} FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, task_id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._read() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [_task_from_row(r) for r in rows]

    def count_tasks_by_state(self) -> dict[str, int]:
        """How many tasks the table holds in each state (states with none left out)."""
        with self._read() as conn:
            rows = conn.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall()
        return {state: n for state, n in rows}

    def delete_ended(self, before: float) -> int:
        """Forget terminal tasks that ended before ``before``; returns how many."""
        terminal = sorted(s.value for s in TERMINAL_STATES)
        with self._write() as conn:
            cur = conn.execute(
                f"DELETE FROM tasks WHERE state IN ({','.join('?' * len(terminal))}) "
                "AND updated_at < ?",
                (*terminal, before),
            )
        return cur.rowcount

    def task_ids(self, owner: str | None = None) -> list[str]:
        """Every stored task ID (of ``owner``'s tasks only, if given), oldest task first (for
        prefix resolution)."""
        with self._read() as conn:
            if owner is None:
                sql, args = "SELECT task_id FROM tasks ORDER BY created_at, task_id", ()
            else:
                sql = "SELECT task_id FROM tasks WHERE owner = ? ORDER BY created_at, task_id"
                args = (owner,)
            rows = conn.execute(sql, args).fetchall()
        return [r[0] for r in rows]

    # --- miners -------------------------------------------------------------------------------

    def upsert_miner(self, record: MinerRecord) -> None:
        """Insert ``record``, or update the stored miner with its ``node_id``.

        An update keeps the earlier of the two ``first_seen`` times, so callers may pass
        ``first_seen=now`` on every connection.
        """
        row = _miner_to_row(record)
        with self._write() as conn:
            conn.execute(
                f"""
                INSERT INTO miners ({_MINER_COLUMNS}) VALUES (?,?,?,?,?,?,?)
                ON CONFLICT (node_id) DO UPDATE SET
                    peer_id = excluded.peer_id,
                    online = excluded.online,
                    first_seen = MIN(miners.first_seen, excluded.first_seen),
                    last_seen = excluded.last_seen,
                    resources = excluded.resources,
                    remote_addr = excluded.remote_addr
                """,
                row,
            )

    def get_miner(self, node_id: str) -> MinerRecord:
        """The miner with exactly ``node_id``; :class:`~sonm_p2p.errors.MinerNotFound` if none."""
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_MINER_COLUMNS} FROM miners WHERE node_id = ?", (node_id,)
            ).fetchone()
        if row is None:
            raise MinerNotFound(f"no miner with ID {node_id!r}")
        return _miner_from_row(row)

    def list_miners(self) -> list[MinerRecord]:
        """Every miner the hub has seen, in first-seen order."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_MINER_COLUMNS} FROM miners ORDER BY first_seen, node_id"
            ).fetchall()
        return [_miner_from_row(r) for r in rows]

    def set_miner_online(self, node_id: str, online: bool, now: float) -> None:
        """Mark a known miner online or offline.

        Going online records ``now`` as ``last_seen``; going offline keeps ``last_seen``, the
        last time the miner was heard from. :class:`~sonm_p2p.errors.MinerNotFound` if unknown.
        """
        with self._write() as conn:
            if online:
                cur = conn.execute(
                    "UPDATE miners SET online = 1, last_seen = MAX(last_seen, ?) WHERE node_id = ?",
                    (now, node_id),
                )
            else:
                cur = conn.execute("UPDATE miners SET online = 0 WHERE node_id = ?", (node_id,))
            if cur.rowcount == 0:
                raise MinerNotFound(f"no miner with ID {node_id!r}")

    def set_miners_seen(self, node_ids: Iterable[str], now: float) -> None:
        """:meth:`set_miner_online` (online) for many miners in one transaction: a ping round
        over 1,000 miners is one commit (one fsync), not 1,000. Unknown IDs are skipped."""
        with self._write() as conn:
            conn.executemany(
                "UPDATE miners SET online = 1, last_seen = MAX(last_seen, ?) WHERE node_id = ?",
                [(now, node_id) for node_id in node_ids],
            )

    def mark_all_offline(self) -> int:
        """Mark every miner offline (at hub start nobody is connected yet); returns how many
        were marked online before."""
        with self._write() as conn:
            return conn.execute("UPDATE miners SET online = 0 WHERE online != 0").rowcount

    # --- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database. Idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> HubState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        # Never blocks (nor deadlocks when called under the lock, e.g. from a debugger).
        if not self._lock.acquire(blocking=False):
            return f"<HubState {self.path} busy>"
        try:
            if self._conn is None:
                return f"<HubState {self.path} closed>"
            (tasks,) = self._conn.execute("SELECT COUNT(*) FROM tasks").fetchone()
            (miners,) = self._conn.execute("SELECT COUNT(*) FROM miners").fetchone()
        except sqlite3.Error:
            return f"<HubState {self.path}>"
        finally:
            self._lock.release()
        return f"<HubState {self.path} tasks={tasks} miners={miners}>"


# --- rows ---------------------------------------------------------------------------------------


def _task_to_row(task: Task) -> tuple[Any, ...]:
    endpoints = json.dumps(
        [
            {
                "container_port": ep.container_port,
                "protocol": ep.protocol,
                "host_ip": ep.host_ip,
                "host_port": ep.host_port,
                "reach": ep.reach,
            }
            for ep in task.endpoints
        ]
    )
    return (
        task.task_id,
        task.miner_id,
        task.image,
        task.owner,
        task.state.value,
        endpoints,
        task.exit_code,
        task.error,
        task.created_at,
        task.updated_at,
        task.container_id,
    )


def _task_from_row(row: tuple[Any, ...]) -> Task:
    (task_id, miner_id, image, owner, state, endpoints, exit_code, error, created, updated, cid) = (
        row
    )
    return Task(
        task_id=task_id,
        miner_id=miner_id,
        image=image,
        owner=owner,
        state=TaskState(state),
        endpoints=tuple(Endpoint(**ep) for ep in json.loads(endpoints)),
        exit_code=exit_code,
        error=error,
        created_at=created,
        updated_at=updated,
        container_id=cid,
    )


def _miner_to_row(record: MinerRecord) -> tuple[Any, ...]:
    return (
        record.node_id,
        record.peer_id,
        int(record.online),
        record.first_seen,
        record.last_seen,
        json.dumps(record.resources, sort_keys=True),
        record.remote_addr,
    )


def _miner_from_row(row: tuple[Any, ...]) -> MinerRecord:
    node_id, peer_id, online, first_seen, last_seen, resources, remote_addr = row
    return MinerRecord(
        node_id=node_id,
        peer_id=peer_id,
        online=bool(online),
        first_seen=first_seen,
        last_seen=last_seen,
        resources=json.loads(resources),
        remote_addr=remote_addr,
    )
