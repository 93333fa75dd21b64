"""Configs of the dev Schema Registry (``/config``), with Confluent's keys and merge rules.

A config is kept as Confluent's ``Config`` entity (``compatibilityLevel``,
``normalize``, ...; absent keys are unset). ``PUT /config[/{subject}]`` takes a
``ConfigUpdateRequest``: its keys replace the stored ones, an explicit JSON
``null`` unsets one, keys it does not know are ignored, and the answer is the
whole stored config in the request's shape (``compatibility``, not
``compatibilityLevel``). Reading a stored config without a level fills in the
server default (BACKWARD), not the global level, exactly as Confluent's cache
does; a subject's config in scope is merged over the global one key by key.
"""

from __future__ import annotations

import logging
from typing import Any

from devstack.registry.compat import COMPATIBILITY_LEVELS, DEFAULT_LEVEL
from devstack.registry.state import RegistryError

__all__ = ["CONFIG_KEYS", "in_scope", "populated", "to_update_shape", "updated"]

logger = logging.getLogger(__name__)

# ConfigUpdateRequest JSON name -> Config JSON name, in Confluent's field order
CONFIG_KEYS = {
    "alias": "alias",
    "aliasForDeks": "aliasForDeks",
    "normalize": "normalize",
    "validateFields": "validateFields",
    "validateNewSchemas": "validateNewSchemas",
    "validateRules": "validateRules",
    "compatibility": "compatibilityLevel",
    "compatibilityPolicy": "compatibilityPolicy",
    "compatibilityGroup": "compatibilityGroup",
    "defaultMetadata": "defaultMetadata",
    "overrideMetadata": "overrideMetadata",
    "defaultRuleSet": "defaultRuleSet",
    "overrideRuleSet": "overrideRuleSet",
}
_BOOLEANS = ("normalize", "validateFields", "validateNewSchemas", "validateRules")
_OBJECTS = ("defaultMetadata", "overrideMetadata", "defaultRuleSet", "overrideRuleSet")
_POLICIES = ("LOGICAL", "STRICT", "LENIENT")
# keys a subject's config takes from the global one when it has none of its own
_INHERITED = (
    "normalize",
    "validateFields",
    "validateNewSchemas",
    "validateRules",
    "compatibilityPolicy",
    "compatibilityGroup",
)
INVALID_LEVEL = (
    "Invalid compatibility level. Valid values are none, backward, forward, full, "
    "backward_transitive, forward_transitive, and full_transitive"
)


def _value(key: str, value: Any) -> Any:
    """One request value, checked and converted the way Jackson and the resource do."""
    if key in _BOOLEANS:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
    elif key in _OBJECTS:
        if isinstance(value, dict):
            return value
    elif isinstance(value, str):
        if key == "compatibility":
            if value.upper() not in COMPATIBILITY_LEVELS:
                raise RegistryError(422, 42203, INVALID_LEVEL)
            return value.upper()
        if key == "compatibilityPolicy":
            return value.upper() if value.upper() in _POLICIES else None
        return value
    raise RegistryError(422, 422, f"Cannot read config key '{key}' from {value!r}")


def updated(old: dict[str, Any] | None, body: Any) -> dict[str, Any]:
    """``ConfigValue.update``: the stored config after a PUT of ``body``."""
    if not isinstance(body, dict):
        raise RegistryError(422, 422, "The config body must be a JSON object")
    new = dict(old or {})
    for request_key, config_key in CONFIG_KEYS.items():
        if request_key not in body:
            continue
        value = None if body[request_key] is None else _value(request_key, body[request_key])
        if value is None:
            new.pop(config_key, None)
        else:
            new[config_key] = value
    return {k: new[k] for k in CONFIG_KEYS.values() if k in new}


def to_update_shape(config: dict[str, Any]) -> dict[str, Any]:
    """The PUT answer: the stored config under ConfigUpdateRequest's names."""
    return {rk: config[ck] for rk, ck in CONFIG_KEYS.items() if config.get(ck) is not None}


def populated(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored config as GET returns it: the server default level when it has none."""
    if config is None:
        return None
    if "compatibilityLevel" not in config:
        config = {**config, "compatibilityLevel": DEFAULT_LEVEL}
    return {k: config[k] for k in CONFIG_KEYS.values() if k in config}


def in_scope(global_config: dict[str, Any] | None, subject_config: dict[str, Any] | None) -> dict:
    """``getConfigInScope``: the subject's config over the global one (or the default)."""
    top = populated(global_config) or {"compatibilityLevel": DEFAULT_LEVEL}
    own = populated(subject_config)
    if own is None:
        return top
    merged = dict(own)
    for key in _INHERITED:
        if key not in own and key in top:
            merged[key] = top[key]
    return {k: merged[k] for k in CONFIG_KEYS.values() if k in merged}
