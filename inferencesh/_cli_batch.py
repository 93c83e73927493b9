"""The `batch` command of the CLI: run an app once per line of a JSONL file, resumably.

`inferencesh batch APP INPUTS.jsonl` runs APP once per JSON object of INPUTS.jsonl (blank lines
skipped), at most `--concurrency` at a time (`client.run_many`), and appends one JSON line per
finished task to the results file, in the order the tasks end. A journal beside it (SQLite in
WAL mode, one connection, every change committed before the next step) records where each
input is, so the same command run again after a crash, `kill -9` or Ctrl-C goes on where the
last run stopped:

    pending ──on_submit──▶ submitting ──first update──▶ started ──line written──▶ finished
     (new)   (committed      (the POST is    (its task id,       (re-attached   (skipped
              before the      on its way)     committed as soon    on a rerun)    on a rerun)
              POST)                           as the POST answers)

A rerun skips `finished` inputs, re-attaches to the tasks of `started` ones
(`BatchItem(index, config, task_id)`) and starts `pending` ones. An input left `submitting` is
the protocol's one window that cannot be closed: its POST may have created a task whose id
never arrived. It is started again (its count of unconfirmed submissions goes up first), its
result line says `"may_have_run_twice": true`, and every run ends by naming it. The window is
kept to the POST itself: the state is committed just before the request is sent and left as
soon as its answer arrives; on Ctrl-C the run stops sending new inputs and waits (bounded) for
the answers of the POSTs on their way before it stops.

The results file is UTF-8 JSON Lines (non-ASCII text as it is, every control character and
U+2028/U+2029 escaped, so `cat` cannot act on a terminal and each line is one line); without a
live display, stdout gets the same lines as ASCII JSON (`\\u` escapes), which survive whatever
encoding stdout has: the two parse to the same values but are not byte for byte the same.

The results file is append-only and fsynced line by line; a line is written before its input
is marked `finished`, and a rerun first cuts a partial last line (a crash mid-write) and marks
`finished` every input whose line is already there (a crash between the two), so each input's
line is in the file exactly once across reruns. The journal stores a hash of the input file
and the app; another batch's journal is a usage error.

Exit codes: 0 every input completed, 1 any did not (or the run failed), 2 usage, 130 Ctrl-C,
141 stdout's reader went away (a closed pipe stops the run as Ctrl-C does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import attrs

from ._async_client import AsyncInference
from ._batch import AsyncBatch, BatchItem, TaskOutcome
from ._cli_run import (
    FAILED,
    INTERRUPTED,
    OK,
    _client,
    _Interrupted,
    _Interrupts,
    _live_console,
    _need_rich,
    _NeedRich,
    _say,
    _stopped,
    _target,
    _Usage,
    _usage,
    parse_object,
)
from ._events import TaskUpdate
from ._exceptions import InferenceshError, NotFoundError, UsageError
from ._status import TaskStatus
from ._terminal import OutputClosed, json_line, json_text, write_out

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["batch_command", "default_journal", "default_results"]

# States of an input in the journal.
PENDING, SUBMITTING, STARTED, FINISHED = "pending", "submitting", "started", "finished"

# The journal's layout; a journal with another version is refused.
_SCHEMA_VERSION = 1
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE inputs (
        "index" INTEGER PRIMARY KEY,      -- the input's position among the file's JSON objects
        state TEXT NOT NULL,              -- pending, submitting, started, finished
        task_id TEXT,                     -- its task, once the server named it
        written INTEGER NOT NULL DEFAULT 0,   -- 1: its line is in the results file
        status TEXT,                      -- how it finished: completed, failed, ..., error
        ok INTEGER,                       -- 1: it completed (and its files were saved)
        unconfirmed INTEGER NOT NULL DEFAULT 0,  -- submissions whose answer never arrived
        cancel_requested INTEGER NOT NULL DEFAULT 0  -- an interrupted run cancelled its task
    )""",
)

# On Ctrl-C: how long to wait for the answers of the POSTs on their way, so that their task
# ids are recorded (and their tasks cancelled) rather than left in the `submitting` window.
_SETTLE_TIMEOUT = 10.0
# On a rerun: how long to wait for the end of a task an interrupted run cancelled, when its
# cancellation is still under way (cancelled: its input starts again; else it is re-attached).
_CANCEL_WAIT = 30.0
# How often the live display takes the batch's tally.
_DISPLAY_INTERVAL = 0.1


def default_results(inputs: Path) -> Path:
    """`INPUTS.results.jsonl` beside the inputs (`.jsonl` replaced, else appended to)."""
    name = inputs.name
    if name.endswith(".jsonl") and name != ".jsonl":
        name = name.removesuffix(".jsonl")
    return inputs.with_name(f"{name}.results.jsonl")


def default_journal(results: Path) -> Path:
    """The journal beside the results file: `<results>.journal.sqlite3`."""
    return results.with_name(f"{results.name}.journal.sqlite3")


# -- the inputs ---------------------------------------------------------------------------------


class _Inputs:
    """The input file, checked line by line before anything starts; each input is read again
    (by its offset) when it is started, so a big file is never held in memory."""

    def __init__(self, path: Path, offsets: list[int], digest: str) -> None:
        self.path = path
        self._offsets = offsets
        self.digest = digest
        self._file: IO[bytes] | None = None

    def __len__(self) -> int:
        return len(self._offsets)

    @classmethod
    def read(cls, path: Path) -> _Inputs:
        """Check every line (one JSON object each, blank lines skipped) and hash the file."""
        digest = hashlib.sha256()
        offsets: list[int] = []
        try:
            with path.open("rb") as file:
                offset = 0
                for number, raw in enumerate(file, 1):
                    digest.update(raw)
                    if raw.strip():
                        _parse_input(path, number, raw)
                        offsets.append(offset)
                    offset += len(raw)
        except OSError as exc:
            raise _Usage(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
        return cls(path, offsets, digest.hexdigest())

    def input(self, index: int) -> dict[str, Any]:
        """The app input of input `index`."""
        if self._file is None:
            self._file = self.path.open("rb")
        self._file.seek(self._offsets[index])
        return _parse_input(self.path, None, self._file.readline())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _parse_input(path: Path, number: int | None, raw: bytes) -> dict[str, Any]:
    where = f"{path} line {number}" if number is not None else f"{path} (changed while running)"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Usage(f"{where} is not UTF-8 text: {exc}") from None
    return parse_object(text, where)


# -- the results file ---------------------------------------------------------------------------


@attrs.frozen
class _Written:
    """What a line of the results file says of its input."""

    status: str
    ok: bool


def _line_ok(line: Mapping[str, Any]) -> bool:
    return line.get("status") == "completed" and "download_error" not in line


class _Results:
    """The results file: locked for this run, appended to line by line, each line fsynced."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def open(cls, path: Path) -> _Results:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise _Usage(
                f"cannot open the results file {str(path)!r}: {exc.strerror or exc}"
            ) from None
        try:
            _lock(fd)
        except BlockingIOError:
            os.close(fd)
            raise _Usage(f"{path} is in use by another inferencesh batch") from None
        return cls(path, fd)

    def close(self) -> None:
        os.close(self._fd)  # releases the lock

    @property
    def empty(self) -> bool:
        return os.fstat(self._fd).st_size == 0

    def scan(self, count: int) -> dict[int, _Written]:
        """The inputs whose line is in the file; a partial last line (a crash in the middle of
        writing it) is cut first."""
        found: dict[int, _Written] = {}
        end = 0
        with self.path.open("rb") as file:
            for number, raw in enumerate(file, 1):
                if not raw.endswith(b"\n"):
                    break  # the partial last line
                end += len(raw)
                found_index, written = self._parse(number, raw, count)
                if found_index in found:
                    raise _Usage(f"{self.path} line {number} repeats input {found_index}: "
                                 "it is not a results file of this batch")  # fmt: skip
                found[found_index] = written
        if os.fstat(self._fd).st_size > end:
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
        return found

    def _parse(self, number: int, raw: bytes, count: int) -> tuple[int, _Written]:
        try:
            line = json.loads(raw)
        except (ValueError, RecursionError):
            line = None
        index = line.get("index") if isinstance(line, dict) else None
        if (
            not isinstance(line, dict)
            or isinstance(index, bool)
            or not isinstance(index, int)
            or not 0 <= index < count
            or not isinstance(line.get("status"), str)
        ):
            raise _Usage(f"{self.path} line {number} is not a result of this batch; "
                         "pass another --out")  # fmt: skip
        return index, _Written(line["status"], _line_ok(line))

    def append(self, line: Mapping[str, Any]) -> None:
        """Write one line (UTF-8 JSON, control characters escaped) and make it durable."""
        data = (json_text(line) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)


def _lock(fd: int) -> None:
    """Hold the results file or the journal for this run (one run of a batch at a time);
    `BlockingIOError` if another run holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock; one run at a time is up to the user
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


# -- the journal --------------------------------------------------------------------------------


@attrs.frozen
class _Row:
    """An input the journal has not seen finish."""

    index: int
    state: str
    task_id: str | None
    unconfirmed: int
    cancel_requested: bool


class _Journal:
    """Where each input is, committed (WAL, synchronous=FULL) at every change of state."""

    def __init__(self, path: Path, db: sqlite3.Connection, fd: int) -> None:
        self.path = path
        self._db = db
        # Holds the lock: two runs sharing a journal (each with its own --out) would overwrite
        # each other's rows.
        self._fd = fd

    @classmethod
    def open(cls, path: Path, *, app: str, inputs: _Inputs, results: _Results) -> _Journal:
        """Open the batch's journal, or create it with every input pending; refuse another
        batch's journal, one another run holds, and a results file that has lines but no
        journal."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _Usage(f"cannot open the journal {str(path)!r}: {exc.strerror or exc}") from None
        try:
            _lock(fd)
        except BlockingIOError:
            os.close(fd)
            raise _Usage(f"{path} is in use by another inferencesh batch") from None
        try:
            db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        except (OSError, sqlite3.Error) as exc:
            os.close(fd)
            raise _Usage(f"cannot open the journal {str(path)!r}: {exc}") from None
        journal = cls(path, db, fd)
        try:
            journal._prepare(app, inputs, results)
        except sqlite3.DatabaseError as exc:
            journal.close(checkpoint=False)
            raise _Usage(f"{path} is not a batch journal ({exc}); remove it or pass another "
                         "--journal") from None  # fmt: skip
        except BaseException:
            journal.close(checkpoint=False)
            raise
        return journal

    def _prepare(self, app: str, inputs: _Inputs, results: _Results) -> None:
        db = self._db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.DatabaseError(f"journal mode {mode}, not WAL")
        # Each state change is durable once committed: a rerun trusts what it reads here.
        db.execute("PRAGMA synchronous=FULL")
        fresh = not db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        expected = {
            "schema": str(_SCHEMA_VERSION),
            "app": app,
            "inputs_sha256": inputs.digest,
            "inputs": str(len(inputs)),
        }
        if fresh:
            if not results.empty:
                raise _Usage(
                    f"{results.path} already holds results but {self.path} has no journal of "
                    "them: remove the results file or pass another --out"
                )
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.executemany("INSERT INTO meta VALUES (?, ?)", expected.items())
                db.executemany(
                    'INSERT INTO inputs ("index", state) VALUES (?, ?)',
                    ((index, PENDING) for index in range(len(inputs))),
                )
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            return
        stored = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if stored.get("schema") != expected["schema"]:
            raise _Usage(
                f"{self.path} is a journal of another version ({stored.get('schema')}): "
                "remove it or pass another --journal"
            )
        if stored.get("app") != app or stored.get("inputs_sha256") != inputs.digest:
            differs = "app" if stored.get("app") != app else "input file"
            raise _Usage(
                f"{self.path} is the journal of another batch (its {differs} differs: it ran "
                f"{stored.get('app')} on other inputs): remove it to start afresh, or pass "
                "another --journal"
            )

    def close(self, *, checkpoint: bool = True) -> None:
        try:
            if checkpoint:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
        finally:
            # After SQLite's connection: closing a descriptor of the file drops the process's
            # POSIX locks on it, SQLite's among them.
            os.close(self._fd)  # releases the lock

    # -- a rerun ------------------------------------------------------------------------------

    def reconcile(self, written: Mapping[int, _Written], results: Path) -> None:
        """Agree with the results file: an input whose line is there is finished (a crash came
        between the line and its commit); a line the journal wrote must still be there."""
        missing = [
            index
            for (index,) in self._db.execute('SELECT "index" FROM inputs WHERE written = 1')
            if index not in written
        ]
        if missing:
            raise _Usage(
                f"{results} lacks the results of {len(missing)} inputs that {self.path} "
                f"recorded as written (input {missing[0]} first): the file was edited or "
                "replaced; remove the journal to start afresh, or pass another --journal"
            )
        unmarked = {
            index
            for (index,) in self._db.execute('SELECT "index" FROM inputs WHERE written = 0')
            if index in written
        }
        for index in sorted(unmarked):
            self.finished(index, written[index].status, written[index].ok)

    def requeue_unconfirmed(self) -> None:
        """Inputs caught in the `submitting` window go back to pending, counted as unconfirmed."""
        self._db.execute(
            "UPDATE inputs SET state = ?, unconfirmed = unconfirmed + 1 WHERE state = ?",
            (PENDING, SUBMITTING),
        )

    def open_rows(self) -> list[_Row]:
        """Every input not finished, in input order."""
        rows = self._db.execute(
            'SELECT "index", state, task_id, unconfirmed, cancel_requested FROM inputs '
            'WHERE state != ? ORDER BY "index"',
            (FINISHED,),
        ).fetchall()
        return [_Row(index, state, task_id, unconfirmed, bool(cancel))
                for index, state, task_id, unconfirmed, cancel in rows]  # fmt: skip

    def unconfirmed(self) -> list[tuple[int, int, str | None, str]]:
        """`(index, unconfirmed submissions, task id, state)` of every input in the window."""
        return self._db.execute(
            'SELECT "index", unconfirmed, task_id, state FROM inputs WHERE unconfirmed > 0 '
            'ORDER BY "index"'
        ).fetchall()

    def tally(self) -> tuple[Counter[str], int, int]:
        """The finished inputs by status, how many did not complete, and how many inputs."""
        by_status: Counter[str] = Counter()
        failed = 0
        for status, ok, count in self._db.execute(
            "SELECT status, ok, COUNT(*) FROM inputs WHERE state = ? GROUP BY status, ok",
            (FINISHED,),
        ):
            by_status[status] += count
            if not ok:
                failed += count
        total = self._db.execute("SELECT COUNT(*) FROM inputs").fetchone()[0]
        return by_status, failed, total

    # -- changes of state (each its own committed transaction) ---------------------------------

    def submitting(self, index: int) -> None:
        self._set(index, "state = ?", SUBMITTING)

    def started(self, index: int, task_id: str) -> None:
        self._set(index, "state = ?, task_id = ?", STARTED, task_id)

    def finished(self, index: int, status: str, ok: bool) -> None:
        self._set(index, "state = ?, written = 1, status = ?, ok = ?", FINISHED, status, int(ok))

    def restart(self, index: int) -> None:
        """Its task was cancelled by an interrupted run: start the input afresh."""
        self._set(index, "state = ?, task_id = NULL, cancel_requested = 0", PENDING)

    def cancel_requested(self, indices: list[int]) -> None:
        if indices:
            self._db.executemany(
                'UPDATE inputs SET cancel_requested = 1 WHERE "index" = ?',
                [(index,) for index in indices],
            )

    def _set(self, index: int, assignments: str, *values: Any) -> None:
        self._db.execute(f'UPDATE inputs SET {assignments} WHERE "index" = ?', (*values, index))


# -- one run ------------------------------------------------------------------------------------


@attrs.frozen
class _Plan:
    """What this run does: the tasks to re-attach to, then the inputs to start."""

    reattach: list[tuple[int, str]]
    fresh: list[int]

    def __len__(self) -> int:
        return len(self.reattach) + len(self.fresh)


class _Run:
    """One run of a batch: feeds `run_many` from the plan, keeps the journal in step with
    its callbacks, and writes each outcome's line."""

    def __init__(
        self,
        args: argparse.Namespace,
        client: AsyncInference,
        inputs: _Inputs,
        journal: _Journal,
        results: _Results,
        console: Console | None,
    ) -> None:
        self.args = args
        self.client = client
        self.inputs = inputs
        self.journal = journal
        self.results = results
        self.console = console
        self.task_ids: dict[int, str] = {}
        self.reattached: set[int] = set()
        self.submitting: set[int] = set()
        self.unconfirmed: set[int]  # by plan(), once the window is requeued
        self.yielded: set[int] = set()
        self.stopping = False
        self.step: asyncio.Future[TaskOutcome] | None = None
        self.finishing: set[asyncio.Task[None]] = set()
        self.download_failure: BaseException | None = None
        self.settled: asyncio.Event | None = None
        self.download_gate: asyncio.Semaphore | None = None

    # -- the plan ---------------------------------------------------------------------------------

    async def plan(self) -> _Plan:
        self.journal.requeue_unconfirmed()
        self.unconfirmed = {index for index, *_ in self.journal.unconfirmed()}
        rows = self.journal.open_rows()
        asked = [row for row in rows if row.state == STARTED and row.cancel_requested]
        cancelled = await asyncio.gather(*(self._was_cancelled(row.task_id) for row in asked))
        restart = {row.index for row, gone in zip(asked, cancelled, strict=True) if gone}
        reattach: list[tuple[int, str]] = []
        fresh: list[int] = []
        for row in rows:
            if row.state == STARTED and row.task_id is not None and row.index not in restart:
                reattach.append((row.index, row.task_id))
                self.task_ids[row.index] = row.task_id
                self.reattached.add(row.index)
                continue
            if row.index in restart:
                self.journal.restart(row.index)
            fresh.append(row.index)
        return _Plan(reattach, fresh)

    async def _was_cancelled(self, task_id: str | None) -> bool:
        """Whether a task an interrupted run asked to cancel did end cancelled (then its
        input runs again; otherwise, e.g. it completed first, it is re-attached)."""
        if task_id is None:
            return True
        try:
            task = await self.client.get_task(task_id)
            if task.status is TaskStatus.CANCELLING:  # the cancel is under way: see it end
                with contextlib.suppress(TimeoutError):
                    async with (
                        asyncio.timeout(_CANCEL_WAIT),
                        self.client.stream_task(task_id) as updates,
                    ):
                        async for update in updates:
                            if update.status.is_terminal:
                                task = update
        except InferenceshError:  # re-attaching reports it (gone, or the API failing)
            return False
        return task.status is TaskStatus.CANCELLED

    def items(self, plan: _Plan) -> Iterator[BatchItem]:
        """The batch's inputs, read one at a time as `run_many` asks; none after Ctrl-C."""
        app = self.args.app
        for index, task_id in plan.reattach:
            if self.stopping:
                return
            yield BatchItem(index, {"app": app, "input": self.inputs.input(index)}, task_id)
        for index in plan.fresh:
            if self.stopping:
                return
            yield BatchItem(index, {"app": app, "input": self.inputs.input(index)})

    # -- run_many's callbacks: the journal, step by step -------------------------------------------

    def on_submit(self, index: int, config: Mapping[str, Any]) -> None:
        """Just before the POST: from here until its answer, the input is in the window."""
        self.journal.submitting(index)
        self.submitting.add(index)

    def on_update(self, index: int, update: TaskUpdate) -> None:
        """The first update of a started task is the POST's answer: record its id at once."""
        if index in self.submitting:
            self.journal.started(index, update.id)
            self.task_ids[index] = update.id
            self._left_window(index)

    def _left_window(self, index: int) -> None:
        self.submitting.discard(index)
        if not self.submitting and self.settled is not None:
            self.settled.set()

    # -- outcomes ------------------------------------------------------------------------------

    async def pump(self, batch: AsyncBatch, *, settle: bool = False) -> None:
        """Take the batch's outcomes as they come, to its end; with `settle`, only until no
        POST is waiting for its answer.

        The next outcome is awaited in a task of its own (`step`), so that Ctrl-C, which
        cancels this coroutine, leaves the batch running until `settle` and `close` decide
        what to do.
        """
        assert self.settled is not None
        while True:
            if settle and not self.submitting:
                return
            if self.step is None:
                self.step = asyncio.ensure_future(batch.__anext__())
            # The downloads too: the line a download writes may meet a closed stdout.
            waiters: set[asyncio.Future[Any]] = {self.step, *self.finishing}
            settled = None
            if settle:
                self.settled.clear()
                settled = asyncio.ensure_future(self.settled.wait())
                waiters.add(settled)
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if settled is not None:
                    settled.cancel()
            self._raise_download_failure()
            if not self.step.done():
                continue
            step, self.step = self.step, None
            try:
                outcome = step.result()
            except StopAsyncIteration:
                return
            self.take(outcome)

    def take(self, outcome: TaskOutcome) -> None:
        """An outcome from the batch: write its line (after saving its files, if asked)."""
        index = outcome.index
        self.yielded.add(index)
        self._left_window(index)  # a POST that failed never answered with a task
        task_id = outcome.task_id or self.task_ids.get(index)
        task = outcome.task
        if outcome.ok and self.args.download is not None and task is not None and task.files:
            job = asyncio.ensure_future(self._save_files(outcome, task_id))
            self.finishing.add(job)
            job.add_done_callback(self._download_done)
            return
        self.write(self.line(outcome, task_id))

    def line(self, outcome: TaskOutcome, task_id: str | None) -> dict[str, Any]:
        """The result line: index, task id, status, then the output or the error."""
        task = outcome.task
        line: dict[str, Any] = {"index": outcome.index, "task_id": task_id}
        if outcome.ok and task is not None:
            line["status"] = TaskStatus.COMPLETED.value
            line["output"] = task.output
        else:
            ended = task is not None and task.status.is_terminal
            line["status"] = task.status.value if task is not None and ended else "error"
            line["error"] = self._error_text(outcome, task_id)
        if outcome.index in self.unconfirmed:
            line["may_have_run_twice"] = True
        return line

    def _error_text(self, outcome: TaskOutcome, task_id: str | None) -> str:
        task = outcome.task
        if task is not None and task.error:
            return str(task.error)
        message = str(outcome.error) if outcome.error is not None else "the task did not complete"
        if task is None and outcome.index in self.reattached:
            gone = "is gone"
            if not isinstance(outcome.error, NotFoundError):
                gone = "could not be followed"
            return f"task {task_id}, started by an earlier run, {gone}: {message}"
        return message

    async def _save_files(self, outcome: TaskOutcome, task_id: str | None) -> None:
        """`--download`: save the output files in DIR/<index>/, then write the line."""
        assert outcome.task is not None
        assert self.download_gate is not None
        folder = Path(self.args.download) / str(outcome.index)
        saved: list[str] = []
        problem = None
        async with self.download_gate:
            try:
                await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
                for file in outcome.task.files:
                    saved.append(str(await self.client.download(file, folder)))
            except (InferenceshError, OSError) as exc:
                problem = str(exc)
        line = self.line(outcome, task_id)
        line["files"] = saved
        if problem is not None:
            line["download_error"] = f"could not save the output files: {problem}"
        self.write(line)

    def write(self, line: dict[str, Any]) -> None:
        """Append the line (durably), then mark its input finished: in this order, so a crash
        between the two is healed by the next run's `reconcile`, never written twice."""
        self.results.append(line)
        self.journal.finished(line["index"], line["status"], _line_ok(line))
        if self.console is None:  # ASCII JSON: no control character, any stdout encoding
            write_out(json_line(line) + "\n")

    def _download_done(self, job: asyncio.Task[None]) -> None:
        """A download ended: keep the first exception it raised (e.g. `OutputClosed` from
        writing its line) for `pump` or `finish_downloads` to raise."""
        self.finishing.discard(job)
        if job.cancelled():
            return
        problem = job.exception()
        if problem is not None and self.download_failure is None:
            self.download_failure = problem

    def _raise_download_failure(self) -> None:
        problem, self.download_failure = self.download_failure, None
        if problem is not None:
            raise problem

    async def finish_downloads(self) -> None:
        while self.finishing:
            await asyncio.wait(set(self.finishing), return_when=asyncio.FIRST_EXCEPTION)
            self._raise_download_failure()
        self._raise_download_failure()

    # -- stopping -----------------------------------------------------------------------------

    async def settle(self, batch: AsyncBatch, interrupts: _Interrupts) -> None:
        """Ctrl-C: start nothing more, and give the POSTs on their way a bounded time to
        answer, so their task ids are recorded instead of left in the window."""
        self.stopping = True
        if self.submitting:
            _say(self.args, f"stopping: waiting for the server to answer {len(self.submitting)} "
                 "submissions (Ctrl-C again to stop now)")  # fmt: skip
        with contextlib.suppress(_Interrupted, TimeoutError):
            await interrupts.guard(asyncio.wait_for(self.pump(batch, settle=True), _SETTLE_TIMEOUT))

    async def close(self, batch: AsyncBatch, interrupts: _Interrupts) -> list[int]:
        """Stop the batch: its tasks still running are cancelled on the server (recorded as
        such first) unless `--no-cancel`. Returns the inputs whose tasks were left running."""
        running = sorted(set(self.task_ids) - self.yielded)
        if running and not self.args.no_cancel:
            with contextlib.suppress(sqlite3.Error):
                self.journal.cancel_requested(running)
        for job in list(self.finishing):
            job.cancel()
        step, self.step = self.step, None
        if step is not None:
            step.cancel()  # the batch stops its tasks here (and on the server)
        try:
            if step is not None:
                await interrupts.guard(asyncio.gather(step, return_exceptions=True))
                if not step.cancelled() and step.exception() is None:
                    self.take(step.result())  # it had just ended
            await interrupts.guard(asyncio.gather(*self.finishing, return_exceptions=True))
            await interrupts.guard(batch.aclose())
        except _Interrupted:
            _say(self.args, "interrupted again: tasks of the batch may still be running")
        return [index for index in running if index not in self.yielded]


@contextlib.asynccontextmanager
async def _display(run: _Run, batch: AsyncBatch) -> AsyncIterator[None]:
    """On a terminal, the batch's live display, fed the batch's tally ten times a second."""
    if run.console is None:
        yield
        return
    from .progress import BatchDisplay

    by_status, _, _ = run.journal.tally()
    display = BatchDisplay(run.console, earlier=by_status)

    async def feed() -> None:
        while True:
            display.show(batch.progress)
            await asyncio.sleep(_DISPLAY_INTERVAL)

    with display:
        feeder = asyncio.ensure_future(feed())
        try:
            yield
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
            display.show(batch.progress)


async def _batch(run: _Run) -> int:
    args = run.args
    async with run.client:
        with _Interrupts() as interrupts:
            run.settled = asyncio.Event()
            run.download_gate = asyncio.Semaphore(args.concurrency)
            try:
                plan = await interrupts.guard(run.plan())
            except _Interrupted:
                _say(args, "interrupted before anything started")
                return INTERRUPTED
            except sqlite3.Error as exc:
                raise _Usage(f"cannot use the journal {run.journal.path}: {exc}") from None
            _announce(run, plan)
            batch = run.client.run_many(
                run.items(plan),
                concurrency=args.concurrency,
                cancel_unfinished=not args.no_cancel,
                on_submit=run.on_submit,
                on_update=run.on_update,
                total=len(plan),
            )
            interrupted = closed = False
            left: list[int] = []
            try:
                async with _display(run, batch):
                    try:
                        await interrupts.guard(run.pump(batch))
                        await interrupts.guard(run.finish_downloads())
                    except (_Interrupted, OutputClosed) as exc:  # Ctrl-C, or stdout closed
                        interrupted = True
                        closed = isinstance(exc, OutputClosed)
                        await run.settle(batch, interrupts)
                    finally:
                        left = await run.close(batch, interrupts)
            except UsageError as exc:
                raise _Usage(str(exc)) from None
            except (InferenceshError, OSError, sqlite3.Error) as exc:
                _say(args, f"error: {exc}")
                _report(run)
                return FAILED
    return _report(run, interrupted=interrupted, closed=closed, left=left)


def _announce(run: _Run, plan: _Plan) -> None:
    """Say what a rerun picks up (nothing for a first run)."""
    by_status, _, total = run.journal.tally()
    done = sum(by_status.values())
    if not done and not plan.reattach and not run.unconfirmed:
        return
    parts = [f"resuming: {done} of {total} inputs done"]
    if plan.reattach:
        parts.append(f"re-attaching to {len(plan.reattach)} started tasks")
    if plan.fresh:
        parts.append(f"{len(plan.fresh)} inputs to start")
    if not plan:
        parts.append("nothing left to run")
    _say(run.args, "; ".join(parts))


def _report(
    run: _Run, *, interrupted: bool = False, closed: bool = False, left: list[int] | None = None
) -> int:
    """The end of a run: the tally of the whole batch, the inputs in the window, the exit code
    (`closed`: stdout's reader went away, which interrupted the run)."""
    args = run.args
    by_status, failed, total = run.journal.tally()
    done = sum(by_status.values())
    for index, count, task_id, state in run.journal.unconfirmed():
        times = "twice" if count == 1 else f"{count + 1} times"
        if state == FINISHED or task_id is not None:
            known = f"the task recorded for it is {task_id}" if task_id else "no task was recorded"
        else:
            known = "it has not been run again yet"
        _say(args, f"input {index} may have run {times}: a run stopped after sending it and "
             "before the server's answer (with the task id) arrived, so the server may hold a "
             f"task for it that was never recorded; {known}")  # fmt: skip
    if interrupted:
        running = left or []
        if running and args.no_cancel:
            what = f"left {len(running)} tasks running (a rerun re-attaches to them)"
        elif running:
            what = f"cancelled {len(running)} running tasks (a rerun starts their inputs again)"
        else:
            what = "no task was running"
        why, code = _stopped(closed)
        _say(args, f"{why}: {done} of {total} inputs done; {what}; run the same "
             "command to go on")  # fmt: skip
        return code
    counts = ", ".join(f"{count} {status}" for status, count in sorted(by_status.items()))
    _say(args, f"{done} of {total} inputs done ({counts or 'none'}); results in {run.results.path}")
    if done < total:
        return FAILED
    return OK if failed == 0 else FAILED


# -- the command ---------------------------------------------------------------------------------


def batch_command(args: argparse.Namespace) -> int:
    """`inferencesh batch APP INPUTS.jsonl`: run APP once per input, resumably."""
    try:
        inputs_path = Path(args.inputs)
        inputs = _Inputs.read(inputs_path)
        out = Path(args.out) if args.out is not None else default_results(inputs_path)
        journal_path = Path(args.journal) if args.journal is not None else default_journal(out)
        _distinct(inputs_path, out, journal_path)
        console = None if args.json else _live_console()
        with contextlib.ExitStack() as stack:
            stack.callback(inputs.close)
            base_url, api_key = stack.enter_context(_target(args))
            client = _client(base_url, api_key)
            results = _Results.open(out)
            stack.callback(results.close)
            journal = _Journal.open(journal_path, app=args.app, inputs=inputs, results=results)
            stack.callback(journal.close)
            try:
                journal.reconcile(results.scan(len(inputs)), out)
            except sqlite3.Error as exc:
                raise _Usage(f"cannot use the journal {journal_path}: {exc}") from None
            if args.download is not None:
                try:
                    Path(args.download).mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise _Usage(f"--download: cannot use {args.download!r}: "
                                 f"{exc.strerror or exc}") from None  # fmt: skip
            run = _Run(args, client, inputs, journal, results, console)
            return asyncio.run(_batch(run))
    except _Usage as exc:
        return _usage(args, str(exc))
    except _NeedRich as exc:
        return _need_rich(args, exc, "pass --json, or pipe the output")
    except KeyboardInterrupt:  # before the handler was installed, or where there is none
        _say(args, "interrupted; run the same command to go on")
        return INTERRUPTED


def _distinct(inputs: Path, out: Path, journal: Path) -> None:
    named = {"the input file": inputs, "--out": out, "--journal": journal}
    seen: dict[Path, str] = {}
    for role, path in named.items():
        key = path.resolve()
        if key in seen:
            raise _Usage(f"{role} and {seen[key]} name the same file, {path}")
        seen[key] = role
