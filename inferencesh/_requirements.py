"""The typed parts of a 412 "requirements not met" answer (protocol: section 2.3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["RequirementError", "SetupAction", "requirement_of"]


@attrs.frozen
class SetupAction:
    """What to do to meet a requirement: `type` is `add_secret`, `connect` or `add_scopes`."""

    type: str
    provider: str | None = None
    provider_name: str | None = None
    scopes: tuple[str, ...] = ()
    scope_descriptions: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class RequirementError:
    """One unmet requirement of an app: a `secret`, `credential` or `scope` named `key`."""

    type: str
    key: str
    message: str
    action: SetupAction | None = None


def requirement_of(item: Mapping[str, Any]) -> RequirementError:
    """The requirement an entry of a 412 answer's `errors` describes (missing fields empty)."""

    def text(data: Mapping[str, Any], name: str) -> str:
        value = data.get(name)
        return value if isinstance(value, str) else ""

    found = item.get("action")
    action = None
    if isinstance(found, Mapping):
        scopes = found.get("scopes")
        descriptions = found.get("scope_descriptions")
        action = SetupAction(
            type=text(found, "type"),
            provider=text(found, "provider") or None,
            provider_name=text(found, "provider_name") or None,
            scopes=tuple(s for s in scopes if isinstance(s, str))
            if isinstance(scopes, list)
            else (),
            scope_descriptions={
                k: v for k, v in descriptions.items() if isinstance(k, str) and isinstance(v, str)
            }
            if isinstance(descriptions, Mapping)
            else {},
        )
    return RequirementError(text(item, "type"), text(item, "key"), text(item, "message"), action)
