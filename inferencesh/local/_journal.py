"""Persistence: tasks, chats and their event logs in a SQLite database, so a restart keeps them.

One writer, the server's event loop, with one connection in WAL mode. Every event is
committed when it is appended, before any stream can send it, so a client that saw an event
finds it again after a crash. A resource's state is checkpointed as JSON when it changes as a
whole (a task's status, a chat's messages); the events after the checkpoint are replayed on
load to rebuild the rest (a task's step updates, an answer's text pieces).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from ._eventlog import Frame, LogEvent

__all__ = ["DataDirError", "Journal", "Record", "StoredEvent"]

FILENAME = "emulator.sqlite3"
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,            -- 'task' or 'chat'
    meta TEXT NOT NULL,            -- what never changes: a task's app, ids, input
    state TEXT,                    -- the checkpoint: a task object without input, a chat record
    state_seq INTEGER NOT NULL DEFAULT 0,
    ended_at REAL                  -- wall-clock time it finished (task) or went idle (chat)
);
CREATE TABLE IF NOT EXISTS events (
    resource_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    name TEXT,                     -- the SSE event name, if any
    head TEXT NOT NULL,
    tail TEXT NOT NULL,
    shared INTEGER NOT NULL,       -- 1: the resource's input goes between head and tail
    full INTEGER NOT NULL,
    terminal INTEGER NOT NULL,
    PRIMARY KEY (resource_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chat_runs (
    chat_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    ord INTEGER NOT NULL,          -- the order of the run's user message in its chat
    data TEXT NOT NULL,            -- the run, its user message and its answer
    PRIMARY KEY (chat_id, run_id)
) WITHOUT ROWID;
"""
logger = logging.getLogger("inferencesh.local")

# Events are pruned in batches, once per this many appended to a resource.
_PRUNE_EVERY = 256


class DataDirError(OSError):
    """The data folder cannot be used: not writable, not our database, or in use elsewhere."""


@attrs.frozen
class StoredEvent:
    """An event as reloaded: enough to rebuild its frame."""

    seq: int
    name: str | None
    head: str
    tail: str
    shared: bool
    full: bool
    terminal: bool

    def frame(self, shared: str) -> Frame:
        """The event's frame, with `shared` (the resource's input) put back if it had it."""
        return Frame(
            self.head, event=self.name, shared=shared if self.shared else "", tail=self.tail,
            full=self.full,
        )  # fmt: skip


@attrs.frozen
class Record:
    """A resource as reloaded: its fixed facts, its checkpoint, and the events kept."""

    id: str
    kind: str
    meta: dict[str, Any]
    state: dict[str, Any]
    state_seq: int
    ended_at: float | None
    events: tuple[StoredEvent, ...]

    def ended_ago(self) -> float | None:
        """Seconds since it ended (by the wall clock), or None if it had not."""
        return None if self.ended_at is None else max(0.0, time.time() - self.ended_at)


class Journal:
    """The database behind `EmulatorOptions.data_dir` (open one per running server)."""

    def __init__(self, data_dir: str, *, max_events: int) -> None:
        folder = Path(data_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                folder / FILENAME, isolation_level=None, timeout=0.2, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise DataDirError(f"cannot use data folder {data_dir}: {exc}") from None
        self._path = folder / FILENAME
        self._failure: str | None = None
        self._max_events = max_events
        self._since_prune: dict[str, int] = {}
        self._since_checkpoint: dict[str, int] = {}
        try:
            # One writer: hold the database for as long as this server runs.
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"journal mode {mode}, not WAL")
            # Survives a crash of this process (the kill this guards against); an OS crash may
            # lose the last transactions, never corrupt the file.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute("BEGIN EXCLUSIVE")  # and, in this locking mode, keep it
            self._db.execute("COMMIT")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {version} is not {_SCHEMA_VERSION}")
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.OperationalError as exc:
            self._db.close()
            if "locked" in str(exc):
                raise DataDirError(
                    f"data folder {data_dir} is in use by another running emulator"
                ) from None
            raise DataDirError(f"cannot use data folder {data_dir}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise DataDirError(f"{folder / FILENAME} is not an emulator database: {exc}") from None

    def close(self) -> None:
        """Checkpoint the WAL into the database file and release it."""
        try:
            with contextlib.suppress(sqlite3.Error):  # a failed disk was reported already
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()

    # -- writing (on the server's loop, as things happen) ----------------------------------------

    @property
    def failure(self) -> str | None:
        """Why persistence stopped (a write failed: disk full, folder removed), or None."""
        return self._failure

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection | None]:
        """One committed transaction, or None once persistence has stopped.

        A write that fails stops persistence (logged once, as an error): the emulator goes on
        in memory rather than failing every task because of its disk.
        """
        if self._failure is not None:
            yield None
            return
        try:
            self._db.execute("BEGIN")
            yield self._db
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._failure = str(exc)
            logger.error(
                "persistence stopped: writing %s failed (%s); the emulator goes on in memory",
                self._path, exc,
            )  # fmt: skip
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def created(self, resource_id: str, kind: str, meta: dict[str, Any]) -> None:
        """Record a new task or chat."""
        with self._transaction() as db:
            if db is not None:
                db.execute(
                    "INSERT OR REPLACE INTO resources (id, kind, meta) VALUES (?, ?, ?)",
                    (resource_id, kind, json.dumps(meta)),
                )

    def event(self, resource_id: str, event: LogEvent) -> None:
        """Record an appended event (committed on return)."""
        frame = event.frame
        with self._transaction() as db:
            if db is None:
                return
            db.execute(
                "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    resource_id, event.seq, frame.event, frame.head, frame.tail,
                    bool(frame.shared), frame.full, event.terminal,
                ),
            )  # fmt: skip
            if frame.full:  # a task's whole state: the new checkpoint
                self._checkpoint(db, resource_id, _task_state(frame), event.seq, event.terminal)
            else:
                self._since_checkpoint[resource_id] = self._since_checkpoint.get(resource_id, 0) + 1
            count = self._since_prune.get(resource_id, 0) + 1
            self._since_prune[resource_id] = count
            if count >= _PRUNE_EVERY:
                # Keep what a reload needs: the replayable window, and every event after the
                # checkpoint.
                self._since_prune[resource_id] = 0
                db.execute(
                    "DELETE FROM events WHERE resource_id = ? AND seq <= ? AND seq <= "
                    "(SELECT state_seq FROM resources WHERE id = ?)",
                    (resource_id, event.seq - self._max_events, resource_id),
                )

    def needs_checkpoint(self, resource_id: str) -> bool:
        """Whether so many events followed the last checkpoint that pruning would lose them."""
        return self._since_checkpoint.get(resource_id, 0) >= self._max_events // 2

    def checkpoint_frame(
        self, resource_id: str, frame: Frame, seq: int, *, ended: bool | None
    ) -> None:
        """Checkpoint a task's whole-state frame (without its input, which `meta` holds)."""
        self.checkpoint(resource_id, _task_state(frame), seq, ended=ended)

    def checkpoint(self, resource_id: str, state: str, seq: int, *, ended: bool | None) -> None:
        """Record a resource's whole state as of event `seq` (`ended`: set or clear its end;
        None: leave it)."""
        with self._transaction() as db:
            if db is not None:
                self._checkpoint(db, resource_id, state, seq, ended)

    def _checkpoint(
        self, db: sqlite3.Connection, resource_id: str, state: str, seq: int, ended: bool | None
    ) -> None:
        if ended is None:
            cursor = db.execute(
                "UPDATE resources SET state = ?, state_seq = ? WHERE id = ?",
                (state, seq, resource_id),
            )
        else:
            cursor = db.execute(
                "UPDATE resources SET state = ?, state_seq = ?, ended_at = ? WHERE id = ?",
                (state, seq, time.time() if ended else None, resource_id),
            )
        if cursor.rowcount:  # not for a resource forgotten meanwhile
            self._since_checkpoint[resource_id] = 0

    def checkpoint_runs(
        self,
        chat_id: str,
        runs: list[tuple[str, int, str]],
        *,
        state: str,
        seq: int,
        ended: bool | None,
    ) -> None:
        """Record runs of a chat (`(run id, order of its user message, record)`) and the
        chat's own small state as of event `seq`, in one transaction: a change costs the
        run it touched, not the whole chat."""
        with self._transaction() as db:
            if db is not None:
                db.executemany(
                    "INSERT OR REPLACE INTO chat_runs VALUES (?, ?, ?, ?)",
                    [(chat_id, run_id, order, data) for run_id, order, data in runs],
                )
                self._checkpoint(db, chat_id, state, seq, ended)

    def forget(self, resource_id: str) -> None:
        """Delete a resource and its events (it expired or was dropped)."""
        self._since_prune.pop(resource_id, None)
        self._since_checkpoint.pop(resource_id, None)
        with self._transaction() as db:
            if db is not None:
                db.execute("DELETE FROM events WHERE resource_id = ?", (resource_id,))
                db.execute("DELETE FROM chat_runs WHERE chat_id = ?", (resource_id,))
                db.execute("DELETE FROM resources WHERE id = ?", (resource_id,))

    # -- reading (once, at start) ----------------------------------------------------------------

    def load(self) -> Iterator[Record]:
        """Every stored resource, oldest first, with its checkpoint and kept events.

        A resource whose first event never got committed (a kill right after it was
        created) has nothing to reload and is deleted.
        """
        with self._transaction() as db:
            if db is not None:
                db.execute(
                    "DELETE FROM events WHERE resource_id IN "
                    "(SELECT id FROM resources WHERE state IS NULL)"
                )
                db.execute(
                    "DELETE FROM chat_runs WHERE chat_id IN "
                    "(SELECT id FROM resources WHERE state IS NULL)"
                )
                db.execute("DELETE FROM resources WHERE state IS NULL")
        rows = self._db.execute(
            "SELECT id, kind, meta, state, state_seq, ended_at FROM resources "
            "WHERE state IS NOT NULL ORDER BY rowid"
        ).fetchall()
        for resource_id, kind, meta, state, state_seq, ended_at in rows:
            events = tuple(
                StoredEvent(seq, name, head, tail, bool(shared), bool(full), bool(terminal))
                for seq, name, head, tail, shared, full, terminal in self._db.execute(
                    "SELECT seq, name, head, tail, shared, full, terminal FROM events "
                    "WHERE resource_id = ? ORDER BY seq",
                    (resource_id,),
                )
            )
            whole = json.loads(state)
            if kind == "chat" and isinstance(whole, dict):
                try:
                    whole = self._chat_state(resource_id, whole)
                except (KeyError, TypeError, ValueError) as exc:
                    logger.warning("not reloading chat %s from the data folder: %r",
                                   resource_id, exc)  # fmt: skip
                    continue
            yield Record(resource_id, kind, json.loads(meta), whole, state_seq, ended_at, events)

    def _chat_state(self, chat_id: str, state: dict[str, Any]) -> dict[str, Any]:
        """A chat's whole state: its own, and its runs' messages and runs in order. A state
        written whole (by an emulator that kept no runs apart) is split first."""
        if "runs" in state or "messages" in state:
            by_id = {message["id"]: message for message in state.get("messages") or []}
            rows = [
                (chat_id, run["id"], by_id[run["user"]]["order"], json.dumps(
                    {"run": run, "user": by_id[run["user"]], "message": by_id[run["message"]]}
                ))
                for run in state.get("runs") or []
            ]  # fmt: skip
            state = {"current": state.get("current")}
            with self._transaction() as db:
                if db is not None:
                    db.executemany("INSERT OR REPLACE INTO chat_runs VALUES (?, ?, ?, ?)", rows)
                    db.execute(
                        "UPDATE resources SET state = ? WHERE id = ?", (json.dumps(state), chat_id)
                    )
        messages: list[Any] = []
        runs: list[Any] = []
        for (data,) in self._db.execute(
            "SELECT data FROM chat_runs WHERE chat_id = ? ORDER BY ord", (chat_id,)
        ).fetchall():
            part = json.loads(data)
            messages += [part["user"], part["message"]]
            runs.append(part["run"])
        return {**state, "messages": messages, "runs": runs}


def _task_state(frame: Frame) -> str:
    """The task object of a whole-state frame, without its input (which `meta` keeps)."""
    if not frame.full:
        raise ValueError("only a task's whole-state frame is a checkpoint")
    return "{" + frame.tail[1:]
