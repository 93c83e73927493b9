from collections.abc import Callable, Sequence
from typing import Any

def bind(
    cls: type[Any],
    fallback: Callable[[Any, Any], Sequence[Any]],
    update: type[Any],
    progress: type[Any],
    by_code: dict[int, Any],
    rank: dict[Any, int],
    terminal: frozenset[Any],
    unknown: Any,
    /,
) -> Callable[[Any, Any], Sequence[Any]]:
    """The compiled `absorb` method for `cls`, handing other payloads to `fallback`."""
