"""Requirements an app may declare missing (secrets, credentials, scopes): the 412 answer.

The hosted API refuses `POST /apps/run` with 412 and a top-level `errors` array when the
caller has not set a secret, connected an integration or granted a scope the app needs. The
emulator has no secrets store: it answers the same 412 for an app registered with
`requires=[...]` (`Emulator.register_app`) and for a simulated task whose input carries
`sim.require`, so clients can exercise their handling of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from ._apps import AppRef, InvalidField, parse_app_ref

__all__ = [
    "MAX_REQUIREMENTS",
    "AppRequirements",
    "Requirement",
    "parse_requirements",
    "requirements_body",
]

#: At most this many requirements in one `sim.require` list or `requires=` declaration.
MAX_REQUIREMENTS = 10
_MAX_TEXT = 200
_MAX_MESSAGE = 1_000
_MAX_SCOPES = 20

# A requirement's type and the setup action that resolves it by default.
_ACTIONS = {"secret": "add_secret", "credential": "connect", "scope": "add_scopes"}


@attrs.frozen(kw_only=True)
class Requirement:
    """One missing requirement, as the hosted API's `RequirementError` (with its action)."""

    type: str
    key: str
    message: str
    action_type: str
    provider: str | None = None
    provider_name: str | None = None
    scopes: tuple[str, ...] = ()
    scope_descriptions: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The wire form; like the Go API's `omitempty`, empty action fields are left out."""
        action: dict[str, Any] = {"type": self.action_type}
        if self.provider:
            action["provider"] = self.provider
        if self.provider_name:
            action["provider_name"] = self.provider_name
        if self.scopes:
            action["scopes"] = list(self.scopes)
        if self.scope_descriptions:
            action["scope_descriptions"] = dict(self.scope_descriptions)
        return {"type": self.type, "key": self.key, "message": self.message, "action": action}


def _default_message(kind: str, key: str) -> str:
    if kind == "secret":
        return f"secret {key} is not set"
    if kind == "credential":
        return f"integration {key} is not connected"
    return f"scope {key} is not granted"


def _text(value: Any, field: str, *, limit: int = _MAX_TEXT, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidField(field, f"must be a non-empty string of at most {limit} characters")
    return value


def _parse_one(value: Any, field: str) -> Requirement:
    if not isinstance(value, dict):
        raise InvalidField(field, "must be an object {type, key, message?, action?}")
    unknown = sorted(set(value) - {"type", "key", "message", "action"})
    if unknown:
        allowed = "action, key, message, type"
        raise InvalidField(f"{field}.{unknown[0]}", f"is not a known key ({allowed})")
    kind = value.get("type")
    if not isinstance(kind, str) or kind not in _ACTIONS:  # {} / [] are unhashable
        raise InvalidField(f"{field}.type", "must be one of secret, credential, scope")
    key = _text(value.get("key"), f"{field}.key", required=True)
    assert key is not None
    message = _text(value.get("message"), f"{field}.message", limit=_MAX_MESSAGE)
    action = value.get("action")
    if action is None:
        action = {}
    if not isinstance(action, dict):
        raise InvalidField(f"{field}.action", "must be an object")
    known = {"type", "provider", "provider_name", "scopes", "scope_descriptions"}
    unknown = sorted(set(action) - known)
    if unknown:
        allowed = ", ".join(sorted(known))
        raise InvalidField(f"{field}.action.{unknown[0]}", f"is not a known key ({allowed})")
    action_type = action.get("type", _ACTIONS[kind])
    if not isinstance(action_type, str) or action_type not in _ACTIONS.values():
        raise InvalidField(f"{field}.action.type", "must be one of add_secret, connect, add_scopes")
    scopes = action.get("scopes") or []
    if (
        not isinstance(scopes, list)
        or len(scopes) > _MAX_SCOPES
        or not all(isinstance(s, str) and 0 < len(s) <= _MAX_TEXT for s in scopes)
    ):
        raise InvalidField(
            f"{field}.action.scopes", f"must be a list of at most {_MAX_SCOPES} non-empty strings"
        )
    descriptions = action.get("scope_descriptions") or {}
    if (
        not isinstance(descriptions, dict)
        or len(descriptions) > _MAX_SCOPES
        or not all(
            isinstance(k, str)
            and 0 < len(k) <= _MAX_TEXT
            and isinstance(v, str)
            and len(v) <= _MAX_MESSAGE
            for k, v in descriptions.items()
        )
    ):
        raise InvalidField(
            f"{field}.action.scope_descriptions",
            f"must map at most {_MAX_SCOPES} scopes to description strings",
        )
    return Requirement(
        type=kind,
        key=key,
        message=message or _default_message(kind, key),
        action_type=action_type,
        provider=_text(action.get("provider"), f"{field}.action.provider"),
        provider_name=_text(action.get("provider_name"), f"{field}.action.provider_name"),
        scopes=tuple(scopes),
        scope_descriptions=tuple(descriptions.items()),
    )


def parse_requirements(value: Any, *, field: str) -> tuple[Requirement, ...]:
    """Read a list of requirement objects (`InvalidField` naming `field` if malformed).

    Each is `{type: secret|credential|scope, key, message?, action?: {type?, provider?,
    provider_name?, scopes?, scope_descriptions?}}`; at most `MAX_REQUIREMENTS` of them. The
    message defaults to one naming the key, the action type to the one that resolves the
    requirement's type (add_secret, connect, add_scopes).
    """
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or len(value) > MAX_REQUIREMENTS:
        raise InvalidField(field, f"must be a list of at most {MAX_REQUIREMENTS} requirements")
    return tuple(_parse_one(item, f"{field}[{i}]") for i, item in enumerate(value))


def requirements_body(requirements: Sequence[Requirement]) -> tuple[str, dict[str, Any]]:
    """The 412 answer's detail (the first requirement's message) and its extra members."""
    detail = requirements[0].message if requirements else "requirements not met"
    return detail, {
        "title": "Requirements not met",
        "errors": [requirement.to_dict() for requirement in requirements],
    }


class AppRequirements:
    """Requirements declared for apps (`register_app(..., requires=[...])`), by reference."""

    def __init__(self) -> None:
        self._by_ref: dict[str, tuple[Requirement, ...]] = {}

    def declare(self, ref: str, requirements: Sequence[Any] | None) -> None:
        """Make runs of `ref` (`ns/name[@version]`) answer 412 with these requirements;
        None or an empty list clears them. `ValueError` if a requirement is malformed."""
        parse_app_ref(ref, field="ref")
        try:
            parsed = parse_requirements(
                None if requirements is None else list(requirements), field="requires"
            )
        except InvalidField as exc:
            raise ValueError(str(exc)) from None
        if parsed:
            self._by_ref[ref] = parsed
        else:
            self._by_ref.pop(ref, None)

    def lookup(self, ref: AppRef) -> tuple[Requirement, ...]:
        """The requirements declared for `ref` (its exact version first), else none."""
        if ref.version is not None:
            found = self._by_ref.get(f"{ref.key}@{ref.version}")
            if found is not None:
                return found
        return self._by_ref.get(ref.key, ())
