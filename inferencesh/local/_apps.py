"""Local apps: the registry, the context an app reports through, and the simulated app."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, cast

import attrs

from .._defaults import finite, shown_arg
from .._status import TaskStatus
from .._wire import json_kind
from ._options import AppFunction

__all__ = [
    "AppContext",
    "AppRef",
    "AppRegistry",
    "InvalidField",
    "SimSettings",
    "load_app",
    "parse_app_ref",
    "parse_sim",
    "simulated_app",
]

_SEGMENT = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"
_APP_REF = re.compile(
    rf"(?P<namespace>{_SEGMENT})/(?P<name>{_SEGMENT})"
    r"(?:@(?P<version>[A-Za-z0-9._-]+))?(?::(?P<function>[A-Za-z_][A-Za-z0-9_]*))?"
)


class InvalidField(ValueError):
    """A request field is missing or malformed; `field` names it (for the 400 detail)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field {field!r}: {message}")
        self.field = field


@attrs.frozen
class AppRef:
    """A parsed app reference `namespace/name[@version][:function]`."""

    namespace: str
    name: str
    version: str | None
    function: str | None

    @property
    def key(self) -> str:
        """`namespace/name`, the registry key."""
        return f"{self.namespace}/{self.name}"


def parse_app_ref(value: Any, *, field: str = "app") -> AppRef:
    """Parse an app reference, raising `InvalidField` naming `field` when it is malformed."""
    if value is None:
        raise InvalidField(field, "is required")
    if not isinstance(value, str):
        raise InvalidField(field, f"must be a string, got {json_kind(value)}")
    match = _APP_REF.fullmatch(value)
    if match is None:
        raise InvalidField(
            field, f"{value[:100]!r} is not an app reference (namespace/name[@version][:function])"
        )
    return AppRef(match["namespace"], match["name"], match["version"], match["function"])


class _StepSink(Protocol):
    """Where an `AppContext` sends what the app reports (the task)."""

    def add_log(self, line: str) -> None: ...

    def set_progress(self, current: float, total: float) -> None: ...

    def set_partial(self, output: Any) -> None: ...

    def open_file(self, uri: str) -> Path: ...

    def save_file(
        self, data: bytes, *, filename: str, content_type: str | None, reuse: bool
    ) -> dict[str, Any]: ...


class AppContext:
    """What a local app gets besides its input: a way to report how its task is going.

    Calls made between two awaits of the app are sent as one per-step update. Once the task
    has ended, further calls are ignored. `function` is the function the caller named
    (`ns/name@version:function` or the request's `function`; None if neither), and
    `session_id` the session the call runs in (None outside a session).
    """

    def __init__(
        self,
        sink: _StepSink,
        *,
        task_id: str,
        app: str,
        function: str | None = None,
        session_id: str | None = None,
    ) -> None:
        self._sink = sink
        self.task_id = task_id
        self.app = app
        self.function = function
        self.session_id = session_id

    def log(self, line: object) -> None:
        """Add a log line (any object; it is converted with `str`)."""
        self._sink.add_log(str(line))

    def progress(self, current: float, total: float) -> None:
        """Report progress as `current` of `total` steps (finite numbers)."""
        for name, value in (("current", current), ("total", total)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"progress {name} must be a number, got {value!r}")
            if finite(value) is None:  # an int past a float's range is none a client reads
                raise ValueError(f"progress {name} must be finite, got {shown_arg(value)}")
        self._sink.set_progress(current, total)

    def partial(self, output: Any) -> None:
        """Publish an intermediate output (JSON-serialisable); it replaces the previous one."""
        self._sink.set_partial(output)

    def open_file(self, uri: str) -> Path:
        """The local path of the emulator file whose `uri` (download URL) is given, such as a
        file URL in the input (read it; do not change or delete it). `UnknownFileError` if no
        uploaded emulator file has that uri."""
        if not isinstance(uri, str):
            raise TypeError(f"uri must be a string, got {type(uri).__name__}")
        return self._sink.open_file(uri)

    def save_file(
        self,
        data: bytes,
        *,
        filename: str,
        content_type: str | None = None,
        reuse: bool = False,
    ) -> dict[str, Any]:
        """Store `data` as a new file of this task and return its FileDTO (put it in the
        output). `content_type` defaults to a guess from `filename`; `FileError` when the
        emulator's file limits refuse it. `reuse=True` returns the file an earlier
        `reuse=True` save stored with the same bytes, name and type, if it still exists,
        instead of storing them again (for apps whose outputs repeat)."""
        return self._sink.save_file(data, filename=filename, content_type=content_type, reuse=reuse)


@attrs.frozen(kw_only=True)
class SimSettings:
    """How the simulated app behaves for one task (from the input's optional `sim` object)."""

    steps: int
    step_delay: float
    fail: str | None = None
    log_bytes: int | None = None
    hold: bool = False
    hold_at: TaskStatus | None = None


#: Caps of the simulated app's knobs (`input.sim`), so that no request makes a big task.
MAX_SIM_STEPS = 1_000
MAX_SIM_STEP_DELAY = 60
MAX_SIM_LOG_BYTES = 4_096
_MAX_FAIL_TEXT = 1_000
# Inputs up to this size (as JSON) are echoed in the simulated output; bigger ones by digest.
_MAX_ECHO = 4_096
_MAX_SUBJECT = 80

_HOLD_STAGES = {
    status
    for status in TaskStatus
    if TaskStatus.RECEIVED.code <= status.code <= TaskStatus.RUNNING.code
}


def parse_sim(value: Any, *, steps: int, step_delay: float) -> SimSettings:
    """Read the input's `sim` object over the emulator's defaults; `InvalidField` if malformed.

    Keys: `steps` (int, 0 to 1,000), `step_delay` (seconds, 0 to 60), `fail` (message, up to
    1,000 characters: fail at the first step), `log_bytes` (pad log lines to about this size,
    0 to 4,096), `hold` (stay RUNNING until cancelled) and `hold_at` (a status name or code
    from received to running: stay there until cancelled). The caps keep one task small;
    a task's logs are also capped as a whole (`EmulatorOptions.max_log_bytes`). `require`
    (requirements that make the run a 412) is read by `parse_requirements`, not here.
    """
    if value is None:
        return SimSettings(steps=steps, step_delay=step_delay)
    if not isinstance(value, dict):
        raise InvalidField("input.sim", f"must be an object, got {json_kind(value)}")
    known = {"steps", "step_delay", "fail", "log_bytes", "hold", "hold_at", "require"}
    unknown = sorted(set(value) - known)
    if unknown:
        allowed = ", ".join(sorted(known))
        raise InvalidField(f"input.sim.{unknown[0]}", f"is not a known key ({allowed})")
    if "steps" in value:
        steps = _int_field(value["steps"], "input.sim.steps", maximum=MAX_SIM_STEPS)
    if "step_delay" in value:
        step_delay = _seconds_field(value["step_delay"], "input.sim.step_delay")
    fail = value.get("fail")
    if fail is not None and (not isinstance(fail, str) or len(fail) > _MAX_FAIL_TEXT):
        raise InvalidField(
            "input.sim.fail", f"must be a string of at most {_MAX_FAIL_TEXT} characters"
        )
    log_bytes = value.get("log_bytes")
    if log_bytes is not None:
        log_bytes = _int_field(log_bytes, "input.sim.log_bytes", maximum=MAX_SIM_LOG_BYTES)
    hold = value.get("hold", False)
    if not isinstance(hold, bool):
        raise InvalidField("input.sim.hold", f"must be a boolean, got {json_kind(hold)}")
    hold_at = None
    if value.get("hold_at") is not None:
        hold_at = TaskStatus.parse(value["hold_at"])
        if hold_at not in _HOLD_STAGES:
            raise InvalidField("input.sim.hold_at", "must be a status from received to running")
    return SimSettings(
        steps=steps,
        step_delay=step_delay,
        fail=fail,
        log_bytes=log_bytes,
        hold=hold,
        hold_at=hold_at,
    )


def _int_field(value: Any, field: str, *, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise InvalidField(field, f"must be an integer from 0 to {maximum}, got {value!r:.40}")
    return value


def _seconds_field(value: Any, field: str) -> float:
    if finite(value) is None or not 0 <= value <= MAX_SIM_STEP_DELAY:
        raise InvalidField(
            field,
            f"must be a number of seconds from 0 to {MAX_SIM_STEP_DELAY}, got {shown_arg(value)}",
        )
    return float(value)


async def simulated_app(input: dict[str, Any], ctx: AppContext, settings: SimSettings) -> Any:
    """The built-in stand-in for any unregistered app.

    Each step logs a line, reports progress and publishes a partial output, then sleeps
    `step_delay`. The output is derived from the input, so tests can check it, and names the
    function called when the caller named one.
    """
    if settings.hold:
        await asyncio.Event().wait()  # until cancelled
    prompt = input.get("prompt")
    subject = prompt if isinstance(prompt, str) else "input"
    if len(subject) > _MAX_SUBJECT:  # logs name the prompt; they do not copy a long one
        subject = subject[: _MAX_SUBJECT - 3] + "..."
    total = settings.steps
    words: list[str] = []
    for step in range(1, total + 1):
        line = f"step {step}/{total}: working on {subject}"
        if settings.fail is not None:
            ctx.log(_pad(f"{line}: failing", settings.log_bytes))
            raise RuntimeError(settings.fail)
        ctx.log(_pad(line, settings.log_bytes))
        ctx.progress(step, total)
        words.append(f"part{step}")
        ctx.partial({"text": " ".join(words), "step": step})
        await asyncio.sleep(settings.step_delay)
    if settings.fail is not None:  # zero steps: there is no step to fail at, so fail here
        raise RuntimeError(settings.fail)
    echo: Any = {key: value for key, value in input.items() if key != "sim"}
    text = json.dumps(echo, sort_keys=True, separators=(",", ":"))
    if len(text) > _MAX_ECHO:  # the task holds its input once; the output names it instead
        echo = {"bytes": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    output = {"text": f"simulated {ctx.app} output for {subject}", "steps": total, "input": echo}
    if ctx.function is not None:
        output["function"] = ctx.function
    return output


def _pad(line: str, size: int | None) -> str:
    if size is None or len(line) >= size:
        return line
    return line + " " + "." * (size - len(line) - 1)


class AppRegistry:
    """Local apps by `namespace/name` (optionally `namespace/name@version`)."""

    def __init__(self, apps: Mapping[str, AppFunction] | None = None) -> None:
        self._apps: dict[str, AppFunction] = {}
        for ref, fn in (apps or {}).items():
            self.register(ref, fn)

    def register(self, ref: str, fn: AppFunction) -> None:
        """Register `fn` as the app `ref` (`namespace/name` or `namespace/name@version`)."""
        parsed = parse_app_ref(ref, field="ref")
        if parsed.function is not None:
            raise ValueError(f"register an app without a function suffix, got {ref!r}")
        if not callable(fn):
            raise TypeError(f"app {ref!r} must be callable, got {fn!r}")
        self._apps[ref] = fn

    def lookup(self, ref: AppRef) -> AppFunction | None:
        """The app registered for `ref` (its exact version first), or None."""
        if ref.version is not None:
            found = self._apps.get(f"{ref.key}@{ref.version}")
            if found is not None:
                return found
        return self._apps.get(ref.key)

    def __contains__(self, ref: str) -> bool:
        return ref in self._apps


def load_app(spec: str) -> tuple[str, AppFunction]:
    """Load `ns/name=package.module:function`; ValueError with a readable message otherwise."""
    ref, sep, target = spec.partition("=")
    module_name, colon, attr = target.partition(":")
    if not sep or not colon or not module_name or not attr:
        raise ValueError(f"expected ns/name=package.module:function, got {spec!r}")
    try:
        parse_app_ref(ref.strip(), field="ref")
    except InvalidField as exc:
        raise ValueError(f"bad app reference in {spec!r}: {exc}") from None
    try:
        module = importlib.import_module(module_name.strip())
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    fn: Any = module
    for part in attr.strip().split("."):
        try:
            fn = getattr(fn, part)
        except AttributeError:
            raise ValueError(f"{module_name!r} has no attribute {attr!r}") from None
    if not callable(fn):
        raise ValueError(f"{target!r} is not callable")
    return ref.strip(), cast(AppFunction, fn)
