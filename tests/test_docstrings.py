"""Every public name has a docstring: the API reference (`mkdocs.yml`) is generated from them.

The public modules are `inferencesh`, `inferencesh.local`, `inferencesh.progress`,
`inferencesh.sse` and `inferencesh.cli`; their public names are their `__all__`. A public
class's public methods, properties and nested classes need their own docstring too, including
those it inherits from the package's private base classes; dunder methods, attrs fields and
enum members do not. Data (constants, type aliases) has no runtime docstring, so it is read from
the source with griffe, as the API reference reads it: a string literal right below the
assignment.
"""

from __future__ import annotations

import enum
import functools
import importlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import griffe
import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = [
    "inferencesh",
    "inferencesh.local",
    "inferencesh.progress",
    "inferencesh.sse",
    "inferencesh.cli",
]
# Set by the build, not written by hand: it has no docstring of its own.
UNDOCUMENTED = {"inferencesh.__version__"}


def _own_doc(obj: Any) -> str | None:
    """The docstring `obj` itself carries (a class's is never its base class's)."""
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__")
        return doc if isinstance(doc, str) else None
    return getattr(obj, "__doc__", None)


def _members(cls: type) -> Iterator[tuple[str, Any]]:
    """A class's public methods, properties and nested classes, its package bases' included."""
    seen: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("inferencesh"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            if isinstance(value, staticmethod | classmethod):
                value = value.__func__
            # Anything else is data: attrs fields (slot descriptors or defaults), enum members,
            # class constants.
            routine = inspect.isfunction(value) or inspect.isclass(value)
            if routine or isinstance(value, property | functools.cached_property):
                yield name, value


def _public_names() -> Iterator[tuple[str, ModuleType, str]]:
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            yield f"{module_name}.{name}", module, name


def _source_docstrings() -> dict[str, str]:
    """The docstrings griffe reads from the source for every public name (aliases resolved)."""
    package = griffe.load("inferencesh", search_paths=[str(ROOT)], resolve_aliases=True)
    found: dict[str, str] = {}
    for module_name in PUBLIC_MODULES:
        module = package if module_name == "inferencesh" else package[module_name[12:]]
        for name in importlib.import_module(module_name).__all__:
            if name in module.members:
                docstring = module.members[name].docstring
                found[f"{module_name}.{name}"] = docstring.value if docstring else ""
    return found


@pytest.fixture(scope="module")
def source_docstrings() -> dict[str, str]:
    return _source_docstrings()


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_module_has_a_docstring_and_all(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert (module.__doc__ or "").strip(), f"{module_name} has no docstring"
    assert isinstance(getattr(module, "__all__", None), list), f"{module_name} has no __all__"


def test_every_public_name_has_a_docstring(source_docstrings: dict[str, str]) -> None:
    missing = []
    for qualified, module, name in _public_names():
        if qualified in UNDOCUMENTED:
            continue
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
            doc = _own_doc(obj)
        else:  # data: its docstring is the string literal below its assignment
            doc = source_docstrings.get(qualified)
        if not (doc or "").strip():
            missing.append(qualified)
    assert [] == missing, "give these public names a docstring"


def test_every_public_method_and_property_has_a_docstring() -> None:
    missing = []
    seen: set[type] = set()
    for qualified, module, name in _public_names():
        cls = getattr(module, name)
        if not inspect.isclass(cls) or cls in seen:
            continue
        seen.add(cls)
        for member, value in _members(cls):
            if isinstance(value, enum.EnumType) and not cls.__module__.startswith("inferencesh"):
                continue
            doc = value.__doc__ if isinstance(value, property) else _own_doc(value)
            if not (doc or "").strip():
                missing.append(f"{qualified}.{member}")
    assert [] == missing, "give these public methods and properties a docstring"


def test_the_walk_sees_methods_properties_and_inherited_ones() -> None:
    """The walk itself: it finds a property, a method and a method from a private base."""
    from inferencesh import AsyncInference, SessionNotFoundError, TaskStatus, TaskUpdate

    assert {"is_terminal"} <= {name for name, _ in _members(TaskStatus)}
    assert {"run", "aclose"} <= {name for name, _ in _members(AsyncInference)}
    assert {"get", "keys"} <= {name for name, _ in _members(TaskUpdate)}  # from MappingReads
    assert {"retryable"} <= {name for name, _ in _members(SessionNotFoundError)}
    assert "with_traceback" not in {name for name, _ in _members(SessionNotFoundError)}
