"""The `inferencesh` command line: `inferencesh <command> ...` or `python -m inferencesh ...`.

Each subcommand is a function that adds its parser to the subparsers (`_add_serve`) and sets
`handler`, the function that runs it and returns the exit code; add a command by writing a
new `_add_<name>` function and listing it in `_COMMANDS`. Every option has help text.

No ordinary event shows a traceback: stdout and stderr replace what their encoding cannot
write, and a closed pipe (`inferencesh run ... | head -1`) ends the command as Ctrl-C does,
quietly, with exit status 141 (see `inferencesh._terminal`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import math
import platform
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ._terminal import OUTPUT_CLOSED, OutputClosed, setup_streams, silence, write_err, write_out
from ._version import __version__

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

    from .local import Emulator

__all__ = ["main"]

_Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for usage errors, 141 when stdout's
    reader went away)."""
    setup_streams()
    try:
        code = _main(argv)
        sys.stdout.flush()  # what is still buffered (--help), while a closed pipe can be told
    except (OutputClosed, BrokenPipeError):
        # The commands handle a closed stdout where it matters (cancelling what they started);
        # anywhere else it ends the command quietly, as a shell's SIGPIPE would.
        silence(sys.stdout)
        return OUTPUT_CLOSED
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    handler: _Handler | None = getattr(args, "handler", None)
    if handler is None:
        return _usage_error(parser, "a command is required")
    return handler(args)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, except that `--help` or `--version` written into a closed pipe ends
    the command as any closed stdout does (exit 141): argparse itself ignores the error, and
    would exit 0 with the text lost. Its subcommands' parsers are of this class too."""

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if not message:
            return
        if file is None or file is sys.stderr:
            write_err(message)
        elif file is sys.stdout:
            write_out(message)  # `OutputClosed` if its reader has gone
        else:
            file.write(message)


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="inferencesh", description="Run AI apps on inference.sh and watch them live."
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"inferencesh {__version__} (Python {platform.python_version()})",
        help="print the SDK's version and exit",
    )
    commands = parser.add_subparsers(title="commands", metavar="<command>")
    for add in _COMMANDS:
        add(commands)
    return parser


# -- argument types ---------------------------------------------------------------------------


def _port(text: str) -> int:
    value = _int_at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {text!r}")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def _whole_seconds(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"expected a whole number of seconds, got {text!r}")
    return int(text)


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _error_status(text: str) -> int:
    value = _int_at_least(400)(text)
    if value > 599:
        raise argparse.ArgumentTypeError(f"expected an HTTP error status 400-599, got {text!r}")
    return value


# -- serve ----------------------------------------------------------------------------------------


def _add_serve(commands: argparse._SubParsersAction[_Parser]) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the local emulator of the inference.sh API",
        description="Run the local emulator of the inference.sh task API until SIGINT/SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=0, help="port (default 0: a free port)")
    parser.add_argument("--api-key", help="accept only this API key (default: any non-empty key)")
    parser.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="NS/NAME=MODULE:FUNCTION",
        help="register a local app: async def app(input, ctx) (repeatable)",
    )
    parser.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="NS/NAME=MODULE:FUNCTION",
        help="register a local agent: async def agent(text, ctx) (repeatable)",
    )
    parser.add_argument(
        "--strict-apps", action="store_true", help="unregistered apps and agents get 404"
    )
    parser.add_argument(
        "--tool-timeout",
        type=_positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long an agent waits for a client tool result (default 30)",
    )
    parser.add_argument(
        "--sim-steps",
        type=_int_at_least(1),
        default=10,
        metavar="N",
        help="steps of the simulated app, which runs unregistered apps; an input's "
        '"sim": {"steps": N} overrides it (default %(default)s)',
    )
    parser.add_argument(
        "--sim-step-delay",
        type=_seconds,
        default=0.08,
        metavar="SECONDS",
        help="pause after each step of the simulated app; an input's "
        '"sim": {"step_delay": S} overrides it (default %(default)s)',
    )
    store = parser.add_argument_group("persistence and task limits")
    store.add_argument(
        "--data-dir",
        metavar="DIR",
        help="keep tasks, event logs and chats in DIR/emulator.sqlite3 and files in "
        "DIR/files/ across restarts (default: in memory, files in a temporary folder)",
    )
    store.add_argument(
        "--max-live-tasks",
        type=_int_at_least(1),
        default=_option_default("max_live_tasks"),
        metavar="N",
        help="tasks running at once; more get 429 (default %(default)s)",
    )
    store.add_argument(
        "--max-live-chats",
        type=_int_at_least(1),
        default=_option_default("max_live_chats"),
        metavar="N",
        help="agent runs at once; more get 429 (default %(default)s)",
    )
    store.add_argument(
        "--task-lifetime",
        type=_positive_seconds,
        default=_option_default("task_lifetime"),
        metavar="SECONDS",
        help="a task or agent run still going after this fails (default %(default)s)",
    )
    store.add_argument(
        "--finished-ttl",
        type=_seconds,
        default=_option_default("finished_task_ttl"),
        metavar="SECONDS",
        help="how long finished tasks and idle chats are kept (default %(default)s)",
    )
    store.add_argument(
        "--max-finished",
        type=_int_at_least(1),
        default=_option_default("max_finished_tasks"),
        metavar="N",
        help="finished tasks (and idle chats) kept at most (default %(default)s)",
    )
    store.add_argument(
        "--max-log-bytes",
        type=_int_at_least(1),
        default=_option_default("max_log_bytes"),
        metavar="BYTES",
        help="log bytes kept per task; later lines are dropped (default %(default)s)",
    )
    store.add_argument(
        "--max-event-log-bytes",
        type=_int_at_least(1),
        default=_option_default("max_event_log_bytes"),
        metavar="BYTES",
        help="replayable event bytes kept per task or chat (default %(default)s)",
    )
    store.add_argument(
        "--memory-budget",
        type=_int_at_least(1),
        default=_option_default("memory_budget"),
        metavar="BYTES",
        help="bytes of inputs, logs, messages and events held in all; finished tasks are "
        "dropped oldest first to stay under it, new work gets 429 when live work fills it "
        "(default %(default)s)",
    )
    store.add_argument(
        "--max-file-bytes",
        type=_int_at_least(1),
        default=_option_default("max_file_bytes"),
        metavar="BYTES",
        help="largest file an upload or an app may store, else 413 (default %(default)s)",
    )
    store.add_argument(
        "--max-files-bytes",
        type=_int_at_least(1),
        default=_option_default("max_files_bytes"),
        metavar="BYTES",
        help="bytes of files on disk in all, else 507 (default %(default)s)",
    )
    store.add_argument(
        "--max-sessions",
        type=_int_at_least(1),
        default=_option_default("max_sessions"),
        metavar="N",
        help="active app sessions at once; more get 429 (default %(default)s)",
    )
    store.add_argument(
        "--session-timeout",
        type=_int_at_least(1),
        default=_option_default("session_timeout"),
        metavar="SECONDS",
        help="idle timeout of a session whose request names none, 1-3600 (default %(default)s)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=_positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="a stream that sent nothing for this long gets a heartbeat (an SSE comment or an "
        "NDJSON line) (default %(default)s)",
    )
    limits = parser.add_argument_group("HTTP limits")
    for flag, kind, metavar, help in _HTTP_LIMIT_FLAGS:
        field = flag.removeprefix("--").replace("-", "_")
        limits.add_argument(
            flag, type=kind, default=_http_default(field), metavar=metavar, help=help
        )
    faults = parser.add_argument_group("fault injection (off by default)")
    faults.add_argument(
        "--drop-after",
        type=_int_at_least(1),
        metavar="N",
        help="cut every stream connection abruptly after N events",
    )
    faults.add_argument(
        "--fail-next",
        type=_int_at_least(0),
        default=0,
        metavar="K",
        help="answer the next K requests with --fail-status",
    )
    faults.add_argument(
        "--fail-status",
        type=_error_status,
        default=503,
        metavar="S",
        help="the HTTP status, 400-599, of the --fail-next answers (default %(default)s)",
    )
    faults.add_argument(
        "--retry-after",
        type=_whole_seconds,
        metavar="SECONDS",
        help="send this Retry-After header with the --fail-next answers (default: none)",
    )
    faults.add_argument(
        "--delay", type=_seconds, default=0.0, metavar="SECONDS", help="delay every response"
    )
    parser.set_defaults(handler=_serve, parser=parser)


# One flag per `HttpLimits` field: (flag, type, metavar, help naming the default and unit).
_HTTP_LIMIT_FLAGS: list[tuple[str, Callable[[str], Any], str, str]] = [
    ("--max-body-bytes", _int_at_least(1), "BYTES",
     "largest request body, else 413 (default %(default)s bytes)"),
    ("--max-url-bytes", _int_at_least(1), "BYTES",
     "longest request URL, else 414 (default %(default)s bytes)"),
    ("--max-header-bytes", _int_at_least(1), "BYTES",
     "longest header name or value, else 431 (default %(default)s bytes)"),
    ("--max-headers", _int_at_least(1), "N",
     "most header lines in a request, else 431 (default %(default)s)"),
    ("--max-json-depth", _int_at_least(1), "N",
     "deepest nesting of a JSON body, else 400 (default %(default)s levels)"),
    ("--header-timeout", _positive_seconds, "SECONDS",
     "time for a request's headers to arrive, else 408 (default %(default)s seconds)"),
    ("--body-timeout", _positive_seconds, "SECONDS",
     "time for a request's body to arrive, else 408 (default %(default)s seconds)"),
    ("--write-timeout", _positive_seconds, "SECONDS",
     "how long a write of a stream or a file download may wait for a client that does not "
     "read, else the connection is reset (default %(default)s seconds)"),
    ("--keepalive-timeout", _positive_seconds, "SECONDS",
     "how long an idle kept-alive connection stays open (default %(default)s seconds)"),
    ("--max-connections", _int_at_least(1), "N",
     "open connections at once, lowered to fit the open-file limit (default %(default)s)"),
]  # fmt: skip


def _http_default(name: str) -> Any:
    """`HttpLimits`' own default for a field."""
    from .local import HttpLimits

    return getattr(attrs.fields(HttpLimits), name).default


def _option_default(name: str) -> Any:
    """The emulator's own default for an option (one place for each default)."""
    from .local import EmulatorOptions

    return getattr(attrs.fields(EmulatorOptions), name).default


def _serve(args: argparse.Namespace) -> int:
    from .local import Emulator, EmulatorOptions, HttpLimits
    from .local._agents import load_agent
    from .local._apps import load_app

    parser: argparse.ArgumentParser = args.parser
    apps = {}
    for spec in args.app:
        try:
            ref, fn = load_app(spec)
        except ValueError as exc:
            return _usage_error(parser, f"--app: {exc}")
        apps[ref] = fn
    agents = {}
    for spec in args.agent:
        try:
            ref, agent = load_agent(spec)
        except ValueError as exc:
            return _usage_error(parser, f"--agent: {exc}")
        agents[ref] = agent
    try:
        http = HttpLimits(
            max_body_bytes=args.max_body_bytes,
            max_url_bytes=args.max_url_bytes,
            max_header_bytes=args.max_header_bytes,
            max_headers=args.max_headers,
            max_json_depth=args.max_json_depth,
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            keepalive_timeout=args.keepalive_timeout,
            max_connections=args.max_connections,
        )
        options = EmulatorOptions(
            api_key=args.api_key,
            sim_steps=args.sim_steps,
            sim_step_delay=args.sim_step_delay,
            strict_apps=args.strict_apps,
            heartbeat_interval=args.heartbeat_interval,
            data_dir=args.data_dir,
            max_live_tasks=args.max_live_tasks,
            max_live_chats=args.max_live_chats,
            task_lifetime=args.task_lifetime,
            finished_task_ttl=args.finished_ttl,
            max_finished_tasks=args.max_finished,
            max_log_bytes=args.max_log_bytes,
            max_event_log_bytes=args.max_event_log_bytes,
            memory_budget=args.memory_budget,
            drop_after=args.drop_after,
            delay=args.delay,
            apps=apps,
            agents=agents,
            tool_timeout=args.tool_timeout,
            http=http,
            max_sessions=args.max_sessions,
            session_timeout=args.session_timeout,
            max_file_bytes=args.max_file_bytes,
            max_files_bytes=args.max_files_bytes,
        )
    except (TypeError, ValueError) as exc:
        return _usage_error(parser, str(exc))
    emulator = Emulator(options)
    if args.fail_next:
        emulator.faults.fail_next(
            args.fail_next, status=args.fail_status, retry_after=args.retry_after
        )
    try:
        asyncio.run(_serve_until_signalled(emulator, args.host, args.port))
    except KeyboardInterrupt:  # a signal before the handlers were installed, or on Windows
        return 0
    except OSError as exc:  # e.g. the port is taken
        write_err(f"inferencesh serve: {exc}\n")
        return 1
    return 0


def _usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    write_err(parser.format_usage())
    write_err(f"{parser.prog}: error: {message}\n")
    return 2


async def _serve_until_signalled(emulator: Emulator, host: str, port: int) -> None:
    from .local import serve

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        async with serve(emulator, host=host, port=port) as url:
            write_out(f"inferencesh emulator listening on {url}\n")
            await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


# -- run, attach, get, cancel, batch and agent (their work is in inferencesh._cli_run, _cli_batch
# and _cli_agent, imported when they run) ---------------------------------------------------------


def _lazy(module: str, name: str) -> _Handler:
    """The handler `name` of `inferencesh.<module>`, imported when the command runs (so that
    `--help` and `serve` never import the client, rich or the batch journal)."""

    def handler(args: argparse.Namespace) -> int:
        command: _Handler = getattr(importlib.import_module(f"inferencesh.{module}"), name)
        return command(args)

    return handler


def _add_target(parser: argparse.ArgumentParser, *, local: bool = True) -> None:
    """--base-url and --api-key, and --local for the commands that start their own work (an
    emulator started for `get`, `cancel` or `attach` would know no task)."""
    if local:
        parser.add_argument(
            "--local",
            action="store_true",
            help="start the local emulator in this process and use it (any API key works)",
        )
    parser.add_argument(
        "--base-url", metavar="URL", help="API base URL (default: $INFERENCE_BASE_URL or hosted)"
    )
    parser.add_argument("--api-key", metavar="KEY", help="API key (default: $INFERENCE_API_KEY)")


def _add_output(parser: argparse.ArgumentParser) -> None:
    """`--json` and `--download`, as run and attach take them."""
    parser.add_argument("--json", action="store_true", help="print one JSON object per update")
    parser.add_argument(
        "--download",
        metavar="DIR",
        help="once the task completes, save its output files in DIR (with a progress bar)",
    )


def _add_run(commands: argparse._SubParsersAction[_Parser]) -> None:
    parser = commands.add_parser(
        "run",
        help="run an app and watch its task live",
        description=(
            "Create a task and show it until it ends: status, progress bar, logs and partial "
            "outputs on a terminal (needs the cli extra: pip install 'inferencesh[cli]'), plain "
            "lines in a pipe, one JSON object per update with --json. Ctrl-C cancels the task, "
            "and so does a closed output pipe (as in run ... | head -1). Exit codes: 0 "
            "completed, 1 failed, 2 usage error, 130 interrupted, 141 output closed."
        ),
    )
    parser.add_argument("app", metavar="APP", help="the app, e.g. infsh/flux-schnell")
    parser.add_argument(
        "--input", metavar="JSON", help="the app input: a JSON object, or @FILE to read one"
    )
    _add_target(parser)
    _add_output(parser)
    parser.set_defaults(handler=_lazy("_cli_run", "run_command"), parser=parser)


def _add_attach(commands: argparse._SubParsersAction[_Parser]) -> None:
    parser = commands.add_parser(
        "attach",
        help="watch an existing task live, as run does",
        description=(
            "Show an existing task until it ends, as run does: status, progress bar, logs and "
            "partial outputs on a terminal, plain lines in a pipe, one JSON object per update "
            "with --json; a task that has already ended is shown as it ended. Ctrl-C detaches "
            "and leaves the task running (this command did not start it) unless --cancel is "
            "given. Exit codes: 0 completed, 1 failed, cancelled or unknown, 2 usage error, "
            "130 interrupted, 141 output closed."
        ),
    )
    parser.add_argument("task_id", metavar="TASK_ID", help="the task, e.g. task_...")
    _add_target(parser, local=False)
    _add_output(parser)
    parser.add_argument(
        "--cancel",
        action="store_true",
        help="on Ctrl-C (or a closed output pipe), cancel the task instead of leaving it running",
    )
    parser.set_defaults(handler=_lazy("_cli_run", "attach_command"), parser=parser)


def _add_get(commands: argparse._SubParsersAction[_Parser]) -> None:
    parser = commands.add_parser(
        "get",
        help="print a task's current state once",
        description=(
            "Print a task's current state once: plain lines (task, logs, progress, status, "
            "then the output if it completed), or one JSON object with --json. Exit codes: 0 "
            "the state was read, whatever the task's status; 1 the task is unknown or the API "
            "failed; 2 usage error."
        ),
    )
    parser.add_argument("task_id", metavar="TASK_ID", help="the task, e.g. task_...")
    _add_target(parser, local=False)
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object, with the keys run --json uses"
    )
    parser.set_defaults(handler=_lazy("_cli_run", "get_command"), parser=parser)


def _add_cancel(commands: argparse._SubParsersAction[_Parser]) -> None:
    parser = commands.add_parser(
        "cancel",
        help="cancel a task",
        description=(
            "Cancel a task and print one line: 'cancelled task ID', or 'cancelling task ID' "
            "while the server stops it. Exit codes: 0 cancelled or cancelling; 1 the task had "
            "already ended (nothing to cancel), is unknown, or the API failed; 2 usage error."
        ),
    )
    parser.add_argument("task_id", metavar="TASK_ID", help="the task, e.g. task_...")
    _add_target(parser, local=False)
    parser.set_defaults(handler=_lazy("_cli_run", "cancel_command"), parser=parser)


def _add_agent(commands: argparse._SubParsersAction[_Parser]) -> None:
    parser = commands.add_parser(
        "agent",
        help="send a message to an agent and stream its answer",
        description=(
            "Send one message to an agent and stream the answer (thinking dimmed). Client tool "
            "calls are answered with an error result, since the CLI cannot run them. The chat's "
            "id goes to stderr as 'chat: ID'; pass it to --chat to continue the conversation."
        ),
    )
    parser.add_argument("ref", metavar="REF", help="the agent, e.g. my-org/assistant@latest")
    parser.add_argument("message", metavar="MESSAGE", help="the message to send")
    parser.add_argument(
        "--chat",
        metavar="ID",
        help="continue this chat (the id an earlier agent command printed) instead of a new one",
    )
    _add_target(parser)
    parser.set_defaults(handler=_lazy("_cli_agent", "agent_command"), parser=parser)


def _add_batch(commands: argparse._SubParsersAction[_Parser]) -> None:
    parser = commands.add_parser(
        "batch",
        help="run an app once per line of a JSONL file, resumably",
        description=(
            "Run APP once per JSON object of INPUTS.jsonl (the app input; blank lines skipped), "
            "a few at a time, and append one JSON line per finished task to the results file. "
            "A journal records each input's progress: after a crash, kill or Ctrl-C, run the "
            "same command again to go on where it stopped (finished inputs are skipped, started "
            "tasks re-attached). A live display on a terminal (needs the cli extra), the result "
            "lines in a pipe or with --json. A closed output pipe stops it as Ctrl-C does. Exit "
            "codes: 0 every input completed, 1 any did not, 2 usage error, 130 interrupted, 141 "
            "output closed."
        ),
    )
    parser.add_argument("app", metavar="APP", help="the app, e.g. infsh/flux-schnell")
    parser.add_argument(
        "inputs", metavar="INPUTS.jsonl", help="one JSON object (an app input) per line"
    )
    parser.add_argument(
        "--concurrency",
        type=_int_at_least(1),
        default=8,
        metavar="N",
        help="tasks running at once (default %(default)s)",
    )
    parser.add_argument(
        "--out",
        metavar="PATH",
        help="the results file, one UTF-8 JSON line per finished task, appended to "
        "(default: INPUTS.results.jsonl beside the inputs); the lines printed are ASCII JSON "
        "of the same values",
    )
    parser.add_argument(
        "--journal",
        metavar="PATH",
        help="the journal that makes a rerun resume (default: <out>.journal.sqlite3)",
    )
    parser.add_argument(
        "--download",
        metavar="DIR",
        help="save each completed task's output files in DIR/<index>/",
    )
    _add_target(parser)
    parser.add_argument(
        "--json", action="store_true", help="print the result lines, even on a terminal"
    )
    parser.add_argument(
        "--no-cancel",
        action="store_true",
        help="on Ctrl-C, leave the started tasks running (a rerun re-attaches to them)",
    )
    parser.set_defaults(handler=_lazy("_cli_batch", "batch_command"), parser=parser)


_COMMANDS: list[Callable[[argparse._SubParsersAction[_Parser]], None]] = [
    _add_serve,
    _add_run,
    _add_attach,
    _add_get,
    _add_cancel,
    _add_batch,
    _add_agent,
]
