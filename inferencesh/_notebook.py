"""One live output in a Jupyter notebook, redrawn in place (for `inferencesh.progress`).

In a notebook, rich publishes every `Console.print` as a new output, and its `Live` redraws in
place only through an ipywidgets `Output` widget (a widget-capable frontend, with the widget
state saved for the last frame to survive). `NotebookRegion` instead publishes the first frame
with IPython's `display(..., display_id=True)` and each later one as an update of that display
(`update_display_data`), which every Jupyter frontend supports and a saved notebook keeps. It
needs IPython (present in any Jupyter kernel) and rich; neither is imported before it is used.
"""

from __future__ import annotations

import contextvars
import io
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

# What rich's own Jupyter output uses: a <pre> that keeps the terminal's layout.
_HTML_FORMAT = (
    '<pre style="white-space:pre;overflow-x:auto;line-height:normal;'
    "font-family:Menlo,'DejaVu Sans Mono',consolas,'Courier New',monospace\">{code}</pre>"
)
_EMPTY = {"text/plain": "", "text/html": ""}


def _ipython_display() -> Callable[..., Any] | None:
    """IPython's `display` when an IPython shell runs this process, else None."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return None
    return display if get_ipython() is not None else None


def in_notebook(console: Console) -> bool:
    """Whether `console` draws into a Jupyter notebook: rich's `is_jupyter` (a Jupyter kernel,
    Colab, Databricks, or `force_jupyter=True`) inside a running IPython shell."""
    return bool(console.is_jupyter) and _ipython_display() is not None


class NotebookRegion:
    """A renderable shown as one notebook output and redrawn in place.

    The same `start`, `refresh` and `stop` as rich's `Live`. `start` publishes the first frame
    (a `display_data` with a display id); from then on a daemon thread redraws it as an update
    of that display, within `1 / refresh_per_second` of an `invalidate()` and every `idle`
    seconds otherwise (so spinners and times move), skipping frames identical to the last one.
    `stop` ends the thread and draws the last frame, or empties the output when `transient`.
    Frames are HTML (rich's colours) with a plain-text alternative, `width` characters wide.
    """

    def __init__(
        self,
        renderable: RenderableType,
        *,
        width: int,
        transient: bool = False,
        refresh_per_second: float = 10,
        idle: float = 1.0,
    ) -> None:
        from rich.console import Console

        self._renderable = renderable
        self._transient = transient
        self._interval = 1 / refresh_per_second
        self._idle = idle
        self._out = io.StringIO()  # what printing writes; only the recording is used
        self._console = Console(
            file=self._out,
            record=True,
            width=width,
            color_system="truecolor",
            force_terminal=False,
            force_jupyter=False,
            legacy_windows=False,
        )
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stale = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: Any = None
        self._shown: dict[str, str] | None = None
        self._drawn = 0.0

    def start(self) -> None:
        """Publish the first frame and start redrawing."""
        display = _ipython_display()
        if display is None or self._thread is not None:
            return
        with self._lock:
            self._shown = self._frame()
            self._handle = display(self._shown, raw=True, display_id=True)
            self._drawn = time.monotonic()
        # The kernel routes output by the cell that made it, kept in a context variable:
        # the thread runs in a copy of this context, so its updates belong to this cell.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._redraw,), name="inferencesh-notebook", daemon=True
        )
        self._thread.start()

    def invalidate(self) -> None:
        """Note that the renderable changed: it is redrawn within a refresh interval."""
        self._stale.set()

    def refresh(self) -> None:
        """Redraw now."""
        if self._handle is not None:
            with self._lock:
                self._draw()

    def stop(self) -> None:
        """Stop redrawing and draw the last frame (or empty the output when transient)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        thread.join(timeout=5)
        with self._lock:
            if self._transient:
                self._publish(dict(_EMPTY))
            else:
                self._draw()

    def _redraw(self) -> None:
        while not self._stopping.wait(self._interval):
            if self._stale.is_set() or time.monotonic() - self._drawn >= self._idle:
                with self._lock:
                    if not self._stopping.is_set():
                        self._draw()

    def _draw(self) -> None:
        self._stale.clear()
        self._drawn = time.monotonic()
        self._publish(self._frame())

    def _publish(self, frame: dict[str, str]) -> None:
        if frame != self._shown:
            self._shown = frame
            self._handle.update(frame, raw=True)

    def _frame(self) -> dict[str, str]:
        """The renderable now, as the MIME bundle of one display."""
        console = self._console
        console.print(self._renderable)
        self._out.seek(0)
        self._out.truncate()
        text = console.export_text(clear=False)
        html = console.export_html(inline_styles=True, code_format=_HTML_FORMAT)
        return {"text/plain": text, "text/html": html}
