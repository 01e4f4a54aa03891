"""Request bodies checked against OpenAI's own request schema for their endpoint.

The schemas are an extract of OpenAI's published OpenAPI spec (``openapi/openai-schemas.json``,
MIT, rebuilt by ``scripts/vendor_openai_schemas.py``). A body that breaks them is refused the way
the API refuses it: a 400 ``invalid_request_error`` with OpenAI's wording, ``param`` and ``code``
(``invalid_type``, ``invalid_value``, ``missing_required_parameter``, ``unknown_parameter``,
``decimal_above_max_value``, ...). In a batch that is one line in the error file, as on OpenAI.

    >>> check_body("/v1/chat/completions", {"model": "gpt-4o-mini", "temperature": "hot",
    ...            "messages": [{"role": "user", "content": "hi"}]})
    Traceback (most recent call last):
    ...
    portfolio_batch.local.store.ApiError: Invalid type for 'temperature': expected a decimal, but got a string instead.

Speed: each property is checked by a validator that fastjsonschema compiles once per process, and
a property value already found valid is not checked again. Free text (``content``, ``text``,
``input``, ...) is left out of that memo's key wherever the schema puts no limit on it, so the
50,000 lines of a batch that differ only in their prompts are checked once. jsonschema explains a
failure; it is only run on a body that fails.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
import orjson

from portfolio_batch.local.store import ApiError

__all__ = ["SCHEMA_PATH", "check_body", "response_schema"]

log = logging.getLogger("portfolio_batch.local")

SCHEMA_PATH = Path(__file__).resolve().parent / "openapi" / "openai-schemas.json"
# Free-text keys whose string values may be left out of the memo key (where the schema allows it),
# and the properties that carry them (masking any other property would cost more than it saves).
_TEXT_KEYS = frozenset({"content", "text", "input", "prompt", "instructions", "arguments"})
_TEXT_PROPERTIES = frozenset({"messages", "input", "prompt", "instructions"})
_MEMO_SIZE = 4096
# o-series and gpt-5 models refuse max_tokens on chat completions (openai-python #2046).
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")
_TYPE_NAMES = {
    "string": "a string",
    "number": "a decimal",
    "integer": "an integer",
    "boolean": "a boolean",
    "object": "an object",
    "array": "an array",
    "null": "null",
}


@functools.cache
def _document() -> dict[str, Any]:
    return orjson.loads(SCHEMA_PATH.read_bytes())  # type: ignore[no-any-return]


def response_schema(name: str) -> dict[str, Any]:
    """A response schema of the vendored spec (``Batch``, ``OpenAIFile``, ``BatchRequestOutput``,
    ...), as a standalone JSON Schema whose ``$ref`` resolve.

    >>> response_schema("Batch")["$ref"]
    '#/components/schemas/Batch'
    """
    components = _document()["components"]
    if name not in components["schemas"]:
        raise KeyError(f"no schema {name!r} in {SCHEMA_PATH.name}")
    return {"$ref": f"#/components/schemas/{name}", "components": components}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _join(values: Iterable[Any], last: str = "and") -> str:
    items = [f"'{v}'" if isinstance(v, str) else json.dumps(v) for v in values]
    if len(items) <= 1:
        return "".join(items)
    if len(items) == 2:
        return f"{items[0]} {last} {items[1]}"
    return ", ".join(items[:-1]) + f", {last} " + items[-1]


def _param(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _bad(message: str, param: str | None, code: str) -> ApiError:
    return ApiError(400, message, param=param, code=code)


# explaining a failure (jsonschema) ---------------------------------------------------------------
def _misfit(error: jsonschema.ValidationError) -> bool:
    """Whether a branch of anyOf/oneOf fails on the value's kind (its type, or a tag such as
    ``role`` or ``type``) rather than inside a value of the right kind."""
    rel = list(error.relative_path)
    if not rel and error.validator in ("type", "enum", "const"):
        return True
    return len(rel) == 1 and error.validator in ("enum", "const")


def _allowed(error: jsonschema.ValidationError) -> list[Any]:
    if error.validator == "const":
        return [error.validator_value]
    return list(error.validator_value) if isinstance(error.validator_value, list) else []


def _first_error(errors: list[jsonschema.ValidationError]) -> jsonschema.ValidationError:
    """The error to report among several: the shallowest in the instance, then the first."""
    return min(errors, key=lambda e: len(e.absolute_path))


def _known(schema: Any, instance: dict[str, Any], depth: int = 0) -> set[str]:
    """The instance's keys that ``schema`` (or its best-fitting branch) names as properties."""
    if not isinstance(schema, dict) or depth > 8:
        return set()
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _known(
            _document()["components"]["schemas"][ref.rsplit("/", 1)[1]], instance, depth + 1
        )
    found = set(schema.get("properties") or {}) & set(instance)
    for part in schema.get("allOf", []):
        found |= _known(part, instance, depth + 1)
    options = [
        _known(part, instance, depth + 1)
        for part in schema.get("anyOf", []) + schema.get("oneOf", [])
    ]
    return found | max(options, key=len, default=set())


def _explain(error: jsonschema.ValidationError) -> ApiError:
    """OpenAI's 400 for a jsonschema error; for anyOf/oneOf, the error of the branch the value
    was meant for (the one naming most of its keys, of its type, with its tag value)."""
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        return _message(error)
    branches: dict[Any, list[jsonschema.ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    instance = error.instance
    options = error.validator_value

    def known(index: Any) -> int:
        return len(_known(options[index], instance)) if isinstance(instance, dict) else 0

    fitting = [i for i, errs in branches.items() if not any(_misfit(e) for e in errs)]
    misfits = [i for i in branches if i not in fitting]
    best = max(fitting, key=lambda i: (known(i), -len(branches[i])), default=None)
    if best is not None and known(best) >= max((known(i) for i in misfits), default=-1):
        return _explain(_first_error(branches[best]))
    wrong = [e for i in misfits for e in branches[i] if _misfit(e)]
    tags = {tuple(e.relative_path) for e in wrong if e.relative_path}
    if isinstance(instance, dict) and len(tags) == 1:
        # every branch meant for this object wants another tag value: list the values it takes
        (tag,) = tags
        values: list[Any] = []
        for e in wrong:
            if tuple(e.relative_path) == tag:
                values += [v for v in _allowed(e) if v not in values]
        return _bad(
            f"Invalid value: {_join([instance.get(tag[0])])}. Supported values are: {_join(values)}.",
            _param([*error.absolute_path, *tag]),
            "invalid_value",
        )
    kinds: list[str] = []
    typed = 0
    for errs in branches.values():
        types = [e for e in errs if e.validator == "type" and not e.relative_path]
        typed += bool(types)
        for e in types:
            wanted = e.validator_value
            for kind in wanted if isinstance(wanted, list) else [wanted]:
                if kind != "null" and kind not in kinds:
                    kinds.append(kind)
    if typed == len(branches) and kinds:  # no branch takes a value of this type
        return _type_error(error, kinds)
    return _explain(_first_error(min(branches.values(), key=len)))


def _type_error(error: jsonschema.ValidationError, kinds: list[str]) -> ApiError:
    names = [_TYPE_NAMES.get(k, k) for k in kinds]
    expected = names[0] if len(names) == 1 else "one of " + _join(names, "or").replace("'", "")
    return _bad(
        f"Invalid type for '{_param(error.absolute_path)}': expected {expected}, but got "
        f"{_type_name(error.instance)} instead.",
        _param(error.absolute_path),
        "invalid_type",
    )


def _message(error: jsonschema.ValidationError) -> ApiError:
    param = _param(error.absolute_path)
    value = error.instance
    rule = error.validator
    limit = error.validator_value
    if rule == "type":
        kinds = limit if isinstance(limit, list) else [limit]
        return _type_error(error, [k for k in kinds if k != "null"] or kinds)
    if rule in ("enum", "const"):
        return _bad(
            f"Invalid value: {_join([value])}. Supported values are: {_join(_allowed(error))}.",
            param,
            "invalid_value",
        )
    if rule == "required":
        missing = next((k for k in limit if k not in value), limit[0])
        name = _param([*error.absolute_path, missing])
        return _bad(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
    if rule == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        extra = next((k for k in value if k not in known), "?")
        name = _param([*error.absolute_path, extra])
        return _bad(f"Unknown parameter: '{name}'.", name, "unknown_parameter")
    if rule in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        kind = error.schema.get("type")
        number = "integer" if kind == "integer" or kind == ["integer", "null"] else "decimal"
        above = rule in ("maximum", "exclusiveMaximum")
        sign = ("<" if above else ">") + ("=" if rule in ("minimum", "maximum") else "")
        where = "above maximum" if above else "below minimum"
        return _bad(
            f"Invalid '{param}': {number} {where} value. Expected a value {sign} {limit}, but "
            f"got {json.dumps(value)} instead.",
            param,
            f"{number}_{'above_max' if above else 'below_min'}_value",
        )
    if rule in ("minItems", "maxItems", "minLength", "maxLength"):
        kind = "array" if rule.endswith("Items") else "string"
        if rule.startswith("min") and len(value) == 0:
            return _bad(
                f"Invalid '{param}': empty {kind}. Expected {_TYPE_NAMES[kind]} with minimum "
                f"length {limit}, but got an empty {kind} instead.",
                param,
                f"empty_{kind}",
            )
        short = rule.startswith("min")
        return _bad(
            f"Invalid '{param}': {kind} too {'short' if short else 'long'}. Expected "
            f"{_TYPE_NAMES[kind]} with {'minimum' if short else 'maximum'} length {limit}, but "
            f"got {_TYPE_NAMES[kind]} with length {len(value)} instead.",
            param,
            f"{kind}_{'below_min' if short else 'above_max'}_length",
        )
    if rule == "pattern":
        return _bad(
            f"Invalid '{param}': string does not match pattern. Expected a string that matches "
            f"the pattern '{limit}'.",
            param,
            "invalid_value",
        )
    return _bad(
        f"Invalid value for '{param or 'body'}': {error.message}.", param or None, "invalid_value"
    )


# the checks, compiled once --------------------------------------------------------------------
def _string_limited(schema: Any, schemas: dict[str, Any], seen: set[int]) -> bool:
    """Whether the value a schema describes could be refused for its string content."""
    if not isinstance(schema, dict) or id(schema) in seen:
        return False
    seen.add(id(schema))
    if {"enum", "const", "minLength", "maxLength", "pattern", "format", "not"} & set(schema):
        return True
    ref = schema.get("$ref")
    if isinstance(ref, str) and _string_limited(schemas[ref.rsplit("/", 1)[1]], schemas, seen):
        return True
    return any(
        _string_limited(part, schemas, seen)
        for key in ("anyOf", "oneOf", "allOf")
        for part in schema.get(key, [])
    )


def _text_is_free(parts: list[Any], schemas: dict[str, Any]) -> bool:
    """Whether every free-text key under these schemas takes any string, so that leaving its
    strings out of the memo key cannot hide an error: no limit on a ``content``/``text``/...
    string, no limited map values, no uniqueItems, no enum of objects."""
    seen: set[int] = set()
    todo = list(parts)
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo.extend(node)
            continue
        if not isinstance(node, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        if "uniqueItems" in node:
            return False
        for key in ("enum", "const"):
            values = node.get(key)
            values = values if isinstance(values, list) else [values]
            if any(isinstance(v, dict | list) for v in values):
                return False
        for key in ("additionalProperties", "patternProperties"):
            extra = node.get(key)
            maps = (
                extra.values()
                if key == "patternProperties" and isinstance(extra, dict)
                else [extra]
            )
            if any(isinstance(m, dict) and _string_limited(m, schemas, set()) for m in maps):
                return False
        for name, sub in (node.get("properties") or {}).items():
            if name in _TEXT_KEYS and _string_limited(sub, schemas, set()):
                return False
        ref = node.get("$ref")
        if isinstance(ref, str):
            todo.append(schemas[ref.rsplit("/", 1)[1]])
        todo.extend(v for k, v in node.items() if k not in ("enum", "const", "$ref"))
    return True


# A free-text key and its string value in orjson's compact output (a quote inside a string is
# always escaped, so a match cannot start inside a string value); replaced by the key alone.
_TEXT_VALUE = re.compile(
    rb'("(?:' + b"|".join(k.encode() for k in sorted(_TEXT_KEYS)) + rb')":)"[^"\\]*(?:\\.[^"\\]*)*"'
)


def _key_only(match: re.Match[bytes]) -> bytes:
    return match.group(1)


class _Property:
    """The checks of one top-level property of one endpoint's body."""

    def __init__(self, name: str, parts: list[Any], components: dict[str, Any]) -> None:
        self.name = name
        self.schema = {"allOf": parts, "components": components}
        schemas = components["schemas"]
        # the memo key may leave out free text only where the schema sets no limit on it
        self.masked = name in _TEXT_PROPERTIES and _text_is_free(parts, schemas)
        self.top_free = name in _TEXT_KEYS and not any(
            _string_limited(p, schemas, set()) for p in parts
        )
        self.valid: dict[bytes, None] = {}
        self._fast: Callable[[Any], Any] | None = None
        self._slow: jsonschema.Draft202012Validator | None = None
        self._lock = threading.Lock()

    def key(self, value: Any) -> bytes:
        """The memo key of a value: its JSON, free text blanked."""
        if self.top_free and type(value) is str:
            return b'"'
        raw = orjson.dumps(value)
        return _TEXT_VALUE.sub(_key_only, raw) if self.masked else raw

    def check(self, value: Any, key: bytes) -> None:
        """Check a value not in the memo; remember it as valid, or raise the API's 400."""
        with self._lock:
            if self._fast is None:
                self._fast = fastjsonschema.compile(self.schema)
        try:
            self._fast(value)
        except fastjsonschema.JsonSchemaValueException:
            self._explain(value)  # raises, unless jsonschema finds nothing wrong
        if len(self.valid) >= _MEMO_SIZE:
            self.valid.clear()
        self.valid[key] = None

    def _explain(self, value: Any) -> None:
        if self._slow is None:
            self._slow = jsonschema.Draft202012Validator(self.schema)
        errors = list(self._slow.iter_errors(value))
        if not errors:
            log.debug("fastjsonschema refused %s but jsonschema accepts it", self.name)
            return
        error = _first_error(errors)
        error.path.appendleft(self.name)  # the paths are relative to the property
        raise _explain(error)


class _Endpoint:
    """The checks of one endpoint's request body."""

    def __init__(self, endpoint: str) -> None:
        document = _document()
        components = document["components"]
        schemas = components["schemas"]
        self.endpoint = endpoint
        self.required: list[str] = []
        parts: dict[str, list[Any]] = {}
        self.closed = False
        todo = [schemas[document["endpoints"][endpoint]]]
        while todo:
            node = todo.pop(0)
            if "$ref" in node:
                todo.insert(0, schemas[node["$ref"].rsplit("/", 1)[1]])
                continue
            todo[:0] = node.get("allOf", [])
            for name, sub in (node.get("properties") or {}).items():
                parts.setdefault(name, []).append(sub)
            self.required += [r for r in node.get("required", []) if r not in self.required]
            self.closed = self.closed or node.get("additionalProperties") is False
        self.properties = {name: _Property(name, p, components) for name, p in parts.items()}

    def check(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise _bad(
                f"Invalid type for 'body': expected an object, but got {_type_name(body)} instead.",
                None,
                "invalid_type",
            )
        for name in body:
            if name not in self.properties:
                if self.endpoint == "/v1/responses" or self.closed:
                    message = f"Unknown parameter: '{name}'."
                else:
                    message = f"Unrecognized request argument supplied: {name}"
                raise _bad(message, name, "unknown_parameter")
        for name in self.required:
            if name not in body:
                raise _bad(
                    f"Missing required parameter: '{name}'.", name, "missing_required_parameter"
                )
        for name, value in body.items():
            prop = self.properties[name]
            key = prop.key(value)
            if key not in prop.valid:
                prop.check(value, key)
        if (
            self.endpoint == "/v1/chat/completions"
            and body.get("max_tokens") is not None
            and _REASONING_MODEL.match(str(body.get("model", "")))
        ):
            raise _bad(
                "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                "'max_completion_tokens' instead.",
                "max_tokens",
                "unsupported_parameter",
            )


_endpoints: dict[str, _Endpoint] = {}
_endpoints_lock = threading.Lock()


def check_body(endpoint: str, body: Any) -> None:
    """Raise the API's 400 ``ApiError`` if ``body`` is not a valid request for ``endpoint``
    (``/v1/chat/completions``, ``/v1/responses``, ... as in a batch's ``endpoint``)."""
    checks = _endpoints.get(endpoint)
    if checks is None:
        with _endpoints_lock:
            checks = _endpoints.get(endpoint) or _Endpoint(endpoint)
            _endpoints[endpoint] = checks
    checks.check(body)
