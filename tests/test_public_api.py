"""Tests for the shape of the public namespace: `inferencesh.__all__` and packaging markers."""

from __future__ import annotations

from importlib import resources

import pytest

import inferencesh
from inferencesh import _exceptions

KEY_NAMES = ["InferenceshError", "Progress", "ProtocolError", "TaskStatus", "TaskUpdate"]


def test_all_has_no_duplicates() -> None:
    """No name appears twice in `__all__`."""
    names = inferencesh.__all__
    assert [] == sorted({n for n in names if names.count(n) > 1})


@pytest.mark.parametrize("name", inferencesh.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    """Every name in `__all__` is an attribute of the package."""
    assert hasattr(inferencesh, name)


# Names currently out of place; see test_all_is_sorted_case_insensitively_unfiltered.
KNOWN_MISPLACED: set[str] = set()


def test_all_is_sorted_case_insensitively() -> None:
    """Public names other than `__version__` (and the known-misplaced) are sorted by lower case."""
    names = [n for n in inferencesh.__all__ if n != "__version__" and n not in KNOWN_MISPLACED]
    assert sorted(names, key=str.lower) == names


def test_all_is_sorted_case_insensitively_unfiltered() -> None:
    """Every public name other than `__version__` is sorted case-insensitively."""
    names = [n for n in inferencesh.__all__ if n != "__version__"]
    assert sorted(names, key=str.lower) == names


def test_all_holds_only_strings() -> None:
    """`__all__` is a list of strings, as `from inferencesh import *` requires."""
    assert [] == [n for n in inferencesh.__all__ if not isinstance(n, str)]


@pytest.mark.parametrize("name", KEY_NAMES)
def test_key_names_exported(name: str) -> None:
    """The core names are part of the public API."""
    assert name in inferencesh.__all__


def test_version_exported_as_string() -> None:
    """`__version__` is exported and is a non-empty string."""
    assert ("__version__", True) == (
        "__version__" if "__version__" in inferencesh.__all__ else None,
        isinstance(inferencesh.__version__, str) and bool(inferencesh.__version__),
    )


@pytest.mark.parametrize("name", _exceptions.__all__)
def test_every_exception_exported_at_top_level(name: str) -> None:
    """Each exception of `inferencesh._exceptions.__all__` is exported, as the same object."""
    assert (True, getattr(_exceptions, name)) == (
        name in inferencesh.__all__,
        getattr(inferencesh, name, None),
    )


def test_exceptions_all_resolves_to_classes() -> None:
    """Every name in `_exceptions.__all__` is an exception class defined there."""
    bad = [
        n
        for n in _exceptions.__all__
        if not (
            isinstance(getattr(_exceptions, n, None), type)
            and issubclass(getattr(_exceptions, n), BaseException)
        )
    ]
    assert [] == bad


def test_star_import_gives_all() -> None:
    """`from inferencesh import *` binds exactly the names of `__all__`."""
    namespace: dict[str, object] = {}
    exec("from inferencesh import *", namespace)
    namespace.pop("__builtins__", None)
    assert sorted(inferencesh.__all__) == sorted(namespace)


def test_py_typed_marker_exists() -> None:
    """The package ships the PEP 561 `py.typed` marker."""
    assert (resources.files("inferencesh") / "py.typed").is_file()


def test_the_version_sorts_above_the_official_clients() -> None:
    """`pip install -U inferencesh` must never swap this SDK for the official 0.x client."""
    from packaging.version import Version

    assert Version(inferencesh.__version__) >= Version("1.0.0.dev0")
    assert Version(inferencesh.__version__) > Version("0.36.0")
