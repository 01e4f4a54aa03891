"""Deterministic JSON that is valid against a JSON schema, optionally built from hints.

``conform(hint, schema)`` keeps what fits of ``hint`` (a value the engine would like to answer)
and fills or fixes the rest, so the rules engine can answer any ``json_schema`` request:

    >>> schema = {"type": "object", "required": ["n", "tag"],
    ...           "properties": {"n": {"type": "integer", "maximum": 5},
    ...                          "tag": {"enum": ["a", "b"]}}}
    >>> conform({"n": 9}, schema)
    {'n': 5, 'tag': 'a'}

Covered: object/properties/required/additionalProperties, string (minLength/maxLength/enum),
integer/number (minimum/maximum/exclusive*), boolean, null, array (items/minItems/maxItems),
enum, const, anyOf/oneOf (first branch the hint fits, else the first non-null), type lists,
local ``$ref``s into ``$defs``/``definitions``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["conform"]

_MISSING = object()


def conform(hint: Any, schema: Any, *, root: Any = None, name: str = "value") -> Any:
    """A value valid against ``schema``, as close to ``hint`` as the schema allows."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or not schema:
        return hint if hint is not _MISSING and hint is not None else name
    if "$ref" in schema:
        return conform(hint, _resolve(schema["$ref"], root), root=root, name=name)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        options = list(schema["enum"])
        return hint if hint in options else options[0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return _choose(hint, schema[key], root=root, name=name)
    kind = schema.get("type")
    if isinstance(kind, list):
        if hint is None and "null" in kind:
            return None
        matching = [t for t in kind if _fits_type(hint, t)]
        kind = matching[0] if matching else next((t for t in kind if t != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    return _BUILDERS.get(kind, _string)(hint, schema, root, name)


def _resolve(ref: str, root: Any) -> Any:
    node = root
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def _fits_type(value: Any, kind: str) -> bool:
    return {
        "null": value is None,
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }.get(kind, False)


def _choose(hint: Any, branches: list[Any], *, root: Any, name: str) -> Any:
    resolved = [
        _resolve(b["$ref"], root) if isinstance(b, dict) and "$ref" in b else b for b in branches
    ]
    for branch in resolved:
        kind = branch.get("type") if isinstance(branch, dict) else None
        if isinstance(kind, str) and _fits_type(hint, kind):
            return conform(hint, branch, root=root, name=name)
    if hint is None and any(isinstance(b, dict) and b.get("type") == "null" for b in resolved):
        return None
    first: Any = next(
        (b for b in resolved if not (isinstance(b, dict) and b.get("type") == "null")), {}
    )
    return conform(hint, first, root=root, name=name)


def _object(hint: Any, schema: dict[str, Any], root: Any, name: str) -> Any:
    hint = hint if isinstance(hint, dict) else {}
    props: dict[str, Any] = schema.get("properties", {})
    required = list(schema.get("required", []))
    out: dict[str, Any] = {}
    for key, sub in props.items():
        if key in hint or key in required:
            out[key] = conform(hint.get(key, _MISSING), sub, root=root, name=key)
    for key in required:  # required but not described: any string will do
        if key not in out:
            out[key] = conform(hint.get(key, _MISSING), {}, root=root, name=key)
    extra = schema.get("additionalProperties", True)
    if extra is not False:
        for key, value in hint.items():
            if key not in out:
                out[key] = (
                    conform(value, extra, root=root, name=key) if isinstance(extra, dict) else value
                )
    return out


def _array(hint: Any, schema: dict[str, Any], root: Any, name: str) -> Any:
    items_schema = schema.get("items", {})
    values = list(hint) if isinstance(hint, list | tuple) else []
    low = int(schema.get("minItems", 0 if isinstance(hint, list) else 1))
    high = schema.get("maxItems")
    if high is not None:
        values = values[: int(high)]
        low = min(low, int(high))
    out = [conform(v, items_schema, root=root, name=name) for v in values]
    while len(out) < low:
        out.append(conform(_MISSING, items_schema, root=root, name=f"{name}_{len(out) + 1}"))
    return out


def _number(hint: Any, schema: dict[str, Any], root: Any, name: str) -> Any:
    integer = schema.get("type") == "integer" or (
        isinstance(schema.get("type"), list) and "integer" in schema["type"]
    )
    if isinstance(hint, bool) or not isinstance(hint, int | float) or not math.isfinite(hint):
        hint = 0
    low = schema.get("minimum")
    high = schema.get("maximum")
    if "exclusiveMinimum" in schema and isinstance(schema["exclusiveMinimum"], int | float):
        xlow = schema["exclusiveMinimum"]
        low = (
            max(low, xlow + (1 if integer else 1e-9))
            if low is not None
            else xlow + (1 if integer else 1e-9)
        )
    if "exclusiveMaximum" in schema and isinstance(schema["exclusiveMaximum"], int | float):
        xhigh = schema["exclusiveMaximum"]
        high = (
            min(high, xhigh - (1 if integer else 1e-9))
            if high is not None
            else xhigh - (1 if integer else 1e-9)
        )
    value: float = hint
    if low is not None:
        value = max(value, low)
    if high is not None:
        value = min(value, high)
    if integer:
        as_int = math.ceil(value) if low is not None and value == low else round(value)
        if high is not None and as_int > high:
            as_int = math.floor(high)
        return int(as_int)
    return float(value)


def _string(hint: Any, schema: dict[str, Any], root: Any, name: str) -> Any:
    text = (
        hint if isinstance(hint, str) else ("" if hint is _MISSING or hint is None else str(hint))
    )
    if not text and hint is _MISSING:
        text = str(name)
    low = int(schema.get("minLength", 0))
    high = schema.get("maxLength")
    if len(text) < low:
        text = text + "x" * (low - len(text))
    if high is not None:
        text = text[: int(high)]
    return text


def _boolean(hint: Any, schema: dict[str, Any], root: Any, name: str) -> Any:
    return hint if isinstance(hint, bool) else True


def _null(hint: Any, schema: dict[str, Any], root: Any, name: str) -> Any:
    return None


_BUILDERS = {
    "object": _object,
    "array": _array,
    "integer": _number,
    "number": _number,
    "string": _string,
    "boolean": _boolean,
    "null": _null,
}
