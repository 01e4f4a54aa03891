"""Answers validated against the request's JSON schema while they are decoded.

A flat object schema (the default risk schema) becomes a msgspec Struct whose decoder validates in
C; any other schema is checked by ``jsonschema``.

    >>> v = validator_for(RISK_SCHEMA)  # doctest: +SKIP
    >>> v.check('{"risk_score": 3}')  # doctest: +SKIP
    'answer does not match the schema: Object missing required field `risk_level`'
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter, itemgetter
from typing import Any

import msgspec
import orjson
from msgspec.structs import astuple

from portfolio_batch.errors import InputError

__all__ = ["Validator", "schema_of_body", "validator_for"]


class Validator:
    """Decodes an answer text against one JSON schema.

    ``decode(content)`` returns the answer (``to_tuple`` of it gives the top-level field values)
    or raises ``msgspec.DecodeError`` (not JSON) / ``msgspec.ValidationError`` (not the schema).
    ``empty`` stands for "no answer" in the field columns.
    """

    fields: list[str]
    dtypes: list[str]
    getters: list[Callable[[Any], Any]]  # field k of a decoded answer

    def getter(self, field: str) -> Callable[[Any], Any] | None:
        """The getter of a field of this schema, None if the schema has no such field."""
        return self.getters[self.fields.index(field)] if field in self.fields else None

    decode: Callable[[str], Any]
    to_tuple: Callable[[Any], tuple[Any, ...]]
    empty: Any

    def check(self, content: str) -> tuple[Any, ...] | str:
        """The answer's field values, or why it is not valid (a str)."""
        try:
            return self.to_tuple(self.decode(content))
        except msgspec.ValidationError as exc:
            return f"answer does not match the schema: {exc}"
        except msgspec.DecodeError as exc:
            return f"answer is not valid JSON: {exc}"


class _StructValidator(Validator):
    """The fast path: a msgspec Struct built from a flat object schema (the default risk schema);
    its decoder validates while it decodes, in C."""

    def __init__(self, struct: type, fields: list[str], dtypes: list[str]) -> None:
        self.decode = msgspec.json.Decoder(struct).decode
        self.to_tuple = astuple
        self.empty = struct(**{f"f{n}": None for n in range(len(fields))})
        self.fields, self.dtypes = fields, dtypes
        self.getters = [attrgetter(f"f{n}") for n in range(len(fields))]


class _JsonSchemaValidator(Validator):
    """Any other schema, checked by ``jsonschema``."""

    def __init__(self, schema: dict[str, Any]) -> None:
        import jsonschema

        cls = jsonschema.validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise InputError(
                f"the requests' response schema is not a valid JSON schema: {exc.message}"
            ) from exc
        self._validator = cls(schema)
        self._best = jsonschema.exceptions.best_match
        props = schema.get("properties") or {}
        self.fields = list(props)
        self.dtypes = [_dtype(p) for p in props.values()]
        self.to_tuple = tuple
        self.empty = (None,) * len(self.fields)
        self.getters = [itemgetter(n) for n in range(len(self.fields))]

    def decode(self, content: str) -> tuple[Any, ...]:  # type: ignore[override]
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise msgspec.DecodeError(str(exc)) from exc
        err = self._best(self._validator.iter_errors(data))
        if err is not None:
            raise msgspec.ValidationError(f"{err.message} - at `{err.json_path}`")
        if isinstance(data, dict):
            return tuple(data.get(f) for f in self.fields)
        return self.empty


_IGNORED_KEYWORDS = {"description", "title", "default", "examples", "format", "$comment"}
_NUMERIC = {"minimum": "ge", "maximum": "le", "exclusiveMinimum": "gt", "exclusiveMaximum": "lt"}
_UNSUPPORTED = object()
_validator_cache: dict[bytes, Validator] = {}


def validator_for(schema: Any) -> Validator | None:
    """The (cached) validator of a JSON schema, a ``json_schema`` response format or a pydantic model."""
    if schema is None:
        return None
    if hasattr(schema, "model_json_schema"):
        schema = schema.model_json_schema()
    if not isinstance(schema, dict):
        raise InputError(
            f"requests.attrs['schema'] must be a JSON schema dict, got {type(schema).__name__}"
        )
    if "schema" in schema and "name" in schema:  # the response_format.json_schema wrapper
        schema = schema["schema"]
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    found = _validator_cache.get(key)
    if found is None:
        found = _validator_cache[key] = _struct_validator(schema) or _JsonSchemaValidator(schema)
    return found


def schema_of_body(body: Any) -> Any:
    """The JSON schema in a request body's ``response_format`` (chat) or ``text.format`` (responses)."""
    if not isinstance(body, dict):
        return None
    fmt = body.get("response_format") or (body.get("text") or {}).get("format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    return (fmt.get("json_schema") or fmt).get("schema")


def _struct_validator(schema: dict[str, Any]) -> Validator | None:
    """A msgspec Struct for a flat object schema, or None when the schema needs jsonschema."""
    if set(schema) - _IGNORED_KEYWORDS - {"type", "properties", "required", "additionalProperties"}:
        return None
    props = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(props, dict) or not props:
        return None
    extra = schema.get("additionalProperties", True)
    if not isinstance(extra, bool):
        return None
    required = set(schema.get("required") or ())
    fields: list[tuple[Any, ...]] = []
    for n, (name, prop) in enumerate(props.items()):
        typ = _py_type(prop)
        if typ is _UNSUPPORTED:
            return None
        # attribute names f0, f1…, renamed to the JSON names: any property name works
        fields.append((f"f{n}", typ) if name in required else (f"f{n}", typ | None, None))
    struct = msgspec.defstruct(
        "Answer",
        fields,
        kw_only=True,
        rename={f"f{n}": name for n, name in enumerate(props)},
        forbid_unknown_fields=not extra,
        gc=False,
    )
    return _StructValidator(struct, list(props), [_dtype(p) for p in props.values()])


def _py_type(prop: Any) -> Any:
    from typing import Annotated, Literal

    if not isinstance(prop, dict):
        return _UNSUPPORTED
    keys = set(prop) - _IGNORED_KEYWORDS
    if "enum" in prop:
        values = prop["enum"]
        if keys - {"enum", "type"} or not values or not all(isinstance(v, str) for v in values):
            return _UNSUPPORTED
        return Literal[tuple(values)]
    t = prop.get("type")
    nullable = isinstance(t, list) and "null" in t
    if isinstance(t, list):
        rest = [x for x in t if x != "null"]
        if len(rest) != 1:
            return _UNSUPPORTED
        t = rest[0]
    found = _base_type(t, prop, keys)
    if found is None:
        return _UNSUPPORTED
    base, meta = found
    typ = Annotated[base, msgspec.Meta(**meta)] if meta else base
    return typ | None if nullable else typ


# the constraints msgspec checks, by their JSON schema and msgspec.Meta names
_STRING_META = {"minLength": "min_length", "maxLength": "max_length", "pattern": "pattern"}
_ARRAY_META = {"minItems": "min_length", "maxItems": "max_length"}


def _base_type(t: Any, prop: dict[str, Any], keys: set[str]) -> tuple[Any, dict[str, Any]] | None:
    """The Python type of a (non-null) JSON schema ``type`` and its ``msgspec.Meta``
    constraints; None when ``prop`` uses a keyword msgspec would not check."""
    if t in ("integer", "number"):
        if keys - {"type", *_NUMERIC}:
            return None
        return (int if t == "integer" else float), {
            _NUMERIC[k]: prop[k] for k in _NUMERIC if k in prop
        }
    if t == "string":
        if keys - {"type", *_STRING_META}:
            return None
        return str, {m: prop[k] for k, m in _STRING_META.items() if k in prop}
    if t == "boolean":
        return None if keys - {"type"} else (bool, {})
    if t == "array":
        if keys - {"type", "items", *_ARRAY_META} or "items" not in prop:
            return None
        item = _py_type(prop["items"])
        if item is _UNSUPPORTED:
            return None
        return list[item], {m: prop[k] for k, m in _ARRAY_META.items() if k in prop}  # type: ignore[valid-type]
    return None


def _dtype(prop: Any) -> str:
    t = prop.get("type") if isinstance(prop, dict) else None
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), None)
    return {"integer": "Int64", "number": "float64", "boolean": "boolean"}.get(t, "object")  # type: ignore[arg-type]
