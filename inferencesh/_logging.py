"""`INFERENCESH_LOG`: SDK logging turned on from the environment, as `OPENAI_LOG` does.

Importing the package configures nothing (a library must leave logging to the application):
the variable is read when the first client is made.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings

__all__ = ["ENVIRONMENT_VARIABLE", "configure_from_environment"]

ENVIRONMENT_VARIABLE = "INFERENCESH_LOG"
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_lock = threading.Lock()
_done = False


def configure_from_environment() -> None:
    """Once per process: when `INFERENCESH_LOG` is `debug`, `info`, `warning` or `error`
    (any case), attach a plain stderr handler to the `inferencesh` logger at that level.
    Unset or empty, it does nothing; any other value is ignored with a warning."""
    global _done
    with _lock:
        if _done:
            return
        _done = True
        value = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
        if not value:
            return
        level = _LEVELS.get(value.lower())
        if level is None:
            warnings.warn(
                f"{ENVIRONMENT_VARIABLE}={value!r:.40} is not one of debug, info, warning, "
                "error; SDK logging stays off",
                RuntimeWarning,
                stacklevel=_caller_level(),
            )
            return
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler.setLevel(level)
        logger = logging.getLogger("inferencesh")
        logger.addHandler(handler)
        logger.setLevel(level)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _caller_level() -> int:
    """The `stacklevel` that makes a warning raised by the function calling this one point at
    the first frame outside the package: the code that made the client, not the client."""
    level = 1
    frame = sys._getframe(1)  # the function that warns: stacklevel 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level
