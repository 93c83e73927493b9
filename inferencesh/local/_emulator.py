"""The `Emulator`: the state behind one local server, and what tests can observe of it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from ._agents import AgentRegistry, RunRequest, launch_run, scripted
from ._apps import AppRegistry, SimSettings
from ._budget import MemoryBudget, Overloaded
from ._chats import Chat, ChatError, ChatStore, Run
from ._eventlog import LogEvent, encode_json
from ._files import FileStore
from ._hub import ChangeHub
from ._journal import Journal
from ._media import simulated_media_app
from ._options import AgentFunction, AppFunction, EmulatorOptions, Faults
from ._requirements import AppRequirements
from ._sessions import Session, SessionStore
from ._streaming import Connection
from ._tasks import Task, TaskStore

__all__ = ["Emulator"]

logger = logging.getLogger("inferencesh.local")

_HOUSEKEEPING_MAX_INTERVAL = 30.0


class Emulator:
    """A local stand-in for the hosted task and agent chat API (in memory, or persisted in
    `options.data_dir`).

    Create it, optionally register apps and agents, then serve `make_app()` (or use `serve` /
    `serve_in_thread`). State lives on the serving event loop; the counters, `task_snapshot`
    and the wait helpers are safe to use from any thread. Serve one application at a time.
    """

    def __init__(self, options: EmulatorOptions | None = None) -> None:
        self.options = options if options is not None else EmulatorOptions()
        self.faults = Faults(drop_after=self.options.drop_after, delay=self.options.delay)
        self.apps = AppRegistry(self.options.apps)
        self._hub = ChangeHub()
        options = self.options
        self.budget = MemoryBudget(options.memory_budget)
        self.tasks = TaskStore(
            self._hub,
            self.budget,
            ttl=options.finished_task_ttl,
            max_finished=options.max_finished_tasks,
            max_live=options.max_live_tasks,
            lifetime=options.task_lifetime,
            max_events=options.max_events_per_task,
            max_event_bytes=options.max_event_log_bytes,
            max_log_bytes=options.max_log_bytes,
        )
        self.tasks.on_finished.append(lambda _: self._wake_housekeeping())
        self.files = FileStore(
            self._hub,
            self.budget,
            max_file_bytes=options.max_file_bytes,
            max_total_bytes=options.max_files_bytes,
            data_dir=options.data_dir,
        )
        self.tasks.files = self.files
        self.agents = AgentRegistry(options.agents)
        self.chats = ChatStore(
            self._hub,
            self.budget,
            ttl=options.finished_task_ttl,
            max_idle=options.max_finished_tasks,
            max_events=options.max_events_per_task,
            max_event_bytes=options.max_event_log_bytes,
            max_live=options.max_live_chats,
            lifetime=options.task_lifetime,
        )
        self.chats.on_idle.append(self._wake_housekeeping)
        self.requirements = AppRequirements()
        self.sessions = SessionStore(
            self._hub,
            max_live=options.max_sessions,
            default_timeout=options.session_timeout,
            ttl=options.finished_task_ttl,
            max_ended=options.max_finished_tasks,
            on_change=self._wake_housekeeping,
        )
        self._connections: set[Connection] = set()
        self._streams_opened = 0
        self._stopping = False
        self._housekeeper: asyncio.Task[None] | None = None
        self._housekeeping_wakeup: asyncio.Event | None = None
        self._journal: Journal | None = None

    def __repr__(self) -> str:
        return (
            f"<Emulator tasks={len(self.tasks)} chats={len(self.chats)} "
            f"open_streams={self.open_streams}>"
        )

    # -- apps and tasks -----------------------------------------------------------------------

    def register_app(
        self, ref: str, fn: AppFunction, *, requires: list[dict[str, Any]] | None = None
    ) -> None:
        """Run `fn` for tasks of app `ref` (`namespace/name`, optionally `@version`).

        `requires`: requirements the caller has not met (`{type, key, message?, action?}`,
        as in the 412 `errors` array): while set, runs of `ref` answer 412
        `requirements_not_met` (register again without them to clear them).
        """
        with self._hub.lock:
            self.apps.register(ref, fn)
            self.requirements.declare(ref, requires)

    def task_snapshot(self, task_id: str) -> dict[str, Any] | None:
        """The task's current full object as the API returns it, or None if unknown/expired."""
        with self._hub.lock:
            task = self.tasks.get(task_id)
            return task.to_dict() if task is not None else None

    def session_snapshot(self, session_id: str) -> dict[str, Any] | None:
        """The session as `GET /sessions/{id}` returns it, or None if unknown or forgotten."""
        return self.sessions.snapshot(session_id)

    def _start_task(
        self,
        app: str,
        input: dict[str, Any],
        *,
        fn: AppFunction | None,
        sim: SimSettings | None,
        session_id: str | None,
        session: Session | None = None,
        function: str | None = None,
    ) -> Task:
        """Create a task for an app (or the simulated app when `fn` is None) and start it,
        as a call of `session` if given (it runs when the session's earlier calls are done).

        Raises `Overloaded` when the live-task cap or the memory budget refuses it.
        """
        if session is not None:
            session_id = session.id
        task = self.tasks.create(app=app, input_json=encode_json(input), session_id=session_id)
        task.function = function
        hold_at = None
        if fn is None:
            settings = sim or SimSettings(
                steps=self.options.sim_steps, step_delay=self.options.sim_step_delay
            )
            hold_at = settings.hold_at

            async def run_simulated(data: dict[str, Any], ctx: Any) -> Any:
                return await simulated_media_app(data, ctx, settings)

            fn = run_simulated
        app_fn = fn

        def start() -> Coroutine[Any, Any, None]:
            return task.run(app_fn, transition_delay=self.options.transition_delay, hold_at=hold_at)

        runner = asyncio.get_running_loop().create_task(
            start() if session is None else session.run_call(task, start),
            name=f"inferencesh.local {task.id}",
        )
        task.runner = runner
        runner.add_done_callback(task.runner_done)
        if session is not None:
            self.sessions.begin_call(session, task)
            runner.add_done_callback(lambda _: self.sessions.call_done(session, task))
        self._wake_housekeeping()  # its lifetime may be the next thing due
        return task

    def _wake_housekeeping(self) -> None:
        if self._housekeeping_wakeup is not None:
            self._housekeeping_wakeup.set()

    # -- agents and chats ----------------------------------------------------------------------

    def register_agent(self, ref: str, fn: AgentFunction) -> None:
        """Run `fn` for messages to agent `ref` (`namespace/name`, optionally `@version`)."""
        with self._hub.lock:
            self.agents.register(ref, fn)

    def chat_snapshot(self, chat_id: str) -> dict[str, Any] | None:
        """The chat with its messages as the API returns it, or None if unknown/expired."""
        with self._hub.lock:
            chat = self.chats.get(chat_id)
            return chat.to_dict() if chat is not None else None

    def _start_run(self, request: RunRequest) -> dict[str, Any]:
        """Add a message to a chat (a new one when `chat_id` is None) and start its run.

        Raises `ChatError` (404 unknown chat or, with `strict_apps`, agent; 409 busy chat).
        Returns the `POST /agents/run` answer data.
        """
        fn = self.agents.lookup(request.ref) if request.ref is not None else None
        if fn is None:
            if request.ref is not None and self.options.strict_apps:
                raise ChatError(404, f"agent {request.ref.key} not found")
            fn = scripted(self.options.effective_agent_step_delay)
        with self._hub.lock:
            if request.chat_id is None:
                chat = self.chats.create(request.agent)
            else:
                found = self.chats.get(request.chat_id)
                if found is None:
                    raise ChatError(404, f"chat {request.chat_id} not found")
                chat = found
            try:
                run = chat.start_run(request.text, request.agent)
            except Overloaded:
                if request.chat_id is None:
                    self.chats.discard(chat)  # refused with its first message: not kept
                raise
            reply = {"user_message": run.user.to_dict(), "assistant_message": run.message.to_dict()}
        launch_run(
            chat,
            run,
            fn,
            context=request.context,
            attachments=request.attachments,
            tool_timeout=self.options.tool_timeout,
        )
        self._wake_housekeeping()  # its lifetime may be the next thing due
        return reply

    # -- streams ---------------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        """Stream connections whose handler has not finished yet."""
        with self._hub.lock:
            return len(self._connections)

    @property
    def streams_opened(self) -> int:
        """Stream connections accepted since the emulator was created."""
        with self._hub.lock:
            return self._streams_opened

    @property
    def stopping(self) -> bool:
        """Whether the server is shutting down (streams end, no new work)."""
        return self._stopping

    def stream_stats(self) -> list[dict[str, object]]:
        """Per-connection counters of the open streams (cursor, bytes sent, buffered bytes)."""
        with self._hub.lock:
            return [conn.stats() for conn in self._connections]

    def _connection_opened(self, conn: Connection) -> None:
        """Count a stream connection in (called by the stream handler)."""
        with self._hub.lock:
            self._connections.add(conn)
            self._streams_opened += 1
        self._hub.notify()

    def _stream_progressed(self) -> None:
        """An open stream wrote an event: wake waiters watching `stream_stats`."""
        self._hub.notify()

    def _connection_closed(self, conn: Connection) -> None:
        """Count a stream connection out, once its handler is done."""
        with self._hub.lock:
            self._connections.discard(conn)
        self._hub.notify()

    # -- waiting -----------------------------------------------------------------------------

    def wait_until(self, predicate: Callable[[Emulator], bool], timeout: float = 5.0) -> bool:
        """Block until `predicate(emulator)` holds or `timeout` passes; return whether it held.

        For synchronous tests; do not call it on the emulator's own event loop.
        """
        return self._hub.wait_until(lambda: predicate(self), timeout)

    async def async_wait_until(
        self, predicate: Callable[[Emulator], bool], timeout: float = 5.0
    ) -> bool:
        """Wait, from any event loop, until `predicate(emulator)` holds; return whether it did."""
        return await self._hub.async_wait_until(lambda: predicate(self), timeout)

    # -- application lifecycle -----------------------------------------------------------------

    def make_app(self) -> web.Application:
        """A fresh aiohttp application serving this emulator's API."""
        from ._http import build_application

        return build_application(self)

    async def _startup(self) -> None:
        """Reload what was persisted, bind to the running loop and start housekeeping
        (aiohttp on_startup). A data folder that cannot be used stops the start first."""
        if self.options.data_dir is not None:
            self._open_journal(self.options.data_dir)
        try:
            self.files.open()
        except BaseException:
            self._close_journal()
            raise
        self._stopping = False
        self._hub.loop_thread = threading.get_ident()
        self._housekeeping_wakeup = asyncio.Event()
        self._housekeeper = asyncio.get_running_loop().create_task(
            self._housekeeping(), name="inferencesh.local housekeeping"
        )

    def _open_journal(self, data_dir: str) -> None:
        """Persist from now on, and take back what was persisted before a restart."""
        journal = Journal(data_dir, max_events=self.options.max_events_per_task)
        self._journal = journal

        def task_event(task: Task, event: LogEvent) -> None:
            if event.seq == 1:
                meta = {"app": task.app, "input": task.input_json, "session_id": task.session_id}
                journal.created(task.id, "task", meta)
            journal.event(task.id, event)
            if journal.needs_checkpoint(task.id):  # many step updates: checkpoint the state
                journal.checkpoint_frame(task.id, task.state_frame(), event.seq, ended=None)

        def checkpoint_chat(chat: Chat, runs: list[Run], seq: int, ended: bool | None) -> None:
            """Checkpoint `runs` of `chat`, and the chat's own state: never the whole chat
            for one change, so a long chat costs no more per message than a short one."""
            records = [
                (run.id, run.user.order, json.dumps(chat.run_record(run), separators=(",", ":")))
                for run in runs
            ]
            state = json.dumps(chat.record(), separators=(",", ":"))
            journal.checkpoint_runs(chat.id, records, state=state, seq=seq, ended=ended)

        def chat_event(chat: Chat, event: LogEvent) -> None:
            if event.seq == 1:
                journal.created(chat.id, "chat", {"agent": chat.agent})
            journal.event(chat.id, event)
            if journal.needs_checkpoint(chat.id):  # many text pieces: checkpoint their run
                checkpoint_chat(chat, [chat.run] if chat.run else [], event.seq, None)

        def chat_changed(chat: Chat, run: Run) -> None:
            checkpoint_chat(chat, [run], chat.log.last_seq, not chat.busy)

        self.tasks.logs.on_event, self.tasks.on_forget = task_event, journal.forget
        self.chats.logs.on_event, self.chats.on_forget = chat_event, journal.forget
        self.chats.on_change = chat_changed
        try:
            self._reload(journal)
        except BaseException:
            self._close_journal()  # release the folder: the server does not start
            raise

    def _reload(self, journal: Journal) -> None:
        """Take back the tasks and chats persisted before a restart."""
        for record in journal.load():
            store = self.tasks if record.kind == "task" else self.chats
            if store.get(record.id) is not None:
                continue  # this emulator served before and still holds it
            try:
                reloaded = store.reload(record)
            except (KeyError, TypeError, ValueError) as exc:  # a record we cannot read back
                logger.warning("not reloading %s %s from the data folder: %r", record.kind,
                               record.id, exc)  # fmt: skip
                continue
            if reloaded is None:
                journal.forget(record.id)  # it expired while the emulator was stopped

    def _close_journal(self) -> None:
        journal, self._journal = self._journal, None
        if journal is None:
            return
        self.tasks.logs.on_event = self.chats.logs.on_event = None
        self.tasks.on_forget = self.chats.on_forget = self.chats.on_change = None
        journal.close()

    async def _shutdown(self) -> None:
        """End every open stream cleanly (aiohttp on_shutdown)."""
        self._stopping = True
        with self._hub.lock:
            connections = list(self._connections)
        for conn in connections:
            conn.source.log.wake()

    async def _cleanup(self) -> None:
        """Cancel the runners and housekeeping and wait for them (aiohttp on_cleanup)."""
        self._stopping = True
        pending = self.tasks.runners() + self.chats.runners()
        if self._housekeeper is not None:
            pending.append(self._housekeeper)
        for job in pending:
            job.cancel()
        # Runners end as failed ("the emulator stopped") through their done callbacks.
        await asyncio.gather(*pending, return_exceptions=True)
        self._close_journal()
        self.files.close()
        self._housekeeper = None
        self._housekeeping_wakeup = None
        self._hub.loop_thread = None

    async def _housekeeping(self) -> None:
        """Expire finished tasks, idle chats and idle sessions, and fail the tasks and runs
        that outlived their lifetime, when their time is up (the only background job)."""
        wakeup = self._housekeeping_wakeup
        assert wakeup is not None
        while True:
            self.tasks.expire()
            self.chats.expire()
            self.sessions.expire()
            self.tasks.reap()
            self.chats.reap()
            dues = [self.tasks.next_due_in(), self.chats.next_due_in(), self.sessions.next_due_in()]
            wait = min([due for due in dues if due is not None], default=_HOUSEKEEPING_MAX_INTERVAL)
            wait = min(wait, _HOUSEKEEPING_MAX_INTERVAL)
            wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait + 0.001):
                    await wakeup.wait()
