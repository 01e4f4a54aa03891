"""Rebuild ``portfolio_batch/local/openapi/openai-schemas.json`` from OpenAI's published spec.

The local server validates every batch request body against OpenAI's request schema for its
endpoint, and ``portfolio_batch.testing.contract`` checks a server's answers against OpenAI's
response schemas. Both read this compact extract instead of the 2.8 MB spec:

- request schemas of the eight batch endpoints and everything they ``$ref``;
- response schemas of the Files and Batches routes (``Batch``, ``OpenAIFile``, the lists, errors);
- ``BatchRequestInput``/``BatchRequestOutput``, which the current spec no longer carries, from the
  project's API contract subset (tests/data/openapi/batch-subset.yaml, OpenAI's spec of 2025-06).

Descriptions, examples, titles, defaults and ``x-*`` annotations are dropped, OpenAPI 3.0's
``nullable: true`` becomes a JSON Schema null branch, ``$recursiveRef`` a plain ``$ref``,
``format`` is dropped (OpenAI checks URLs when it fetches them, not by pattern), and ``oneOf``
becomes ``anyOf``: the spec's branches overlap (a chat-style input message is both an
``EasyInputMessage`` and an ``InputMessage``), and the API takes a value any branch describes.

    .venv/bin/python scripts/vendor_openai_schemas.py /path/to/openapi.yaml

``openapi.yaml`` is OpenAI's ``openapi.documented.yml`` as copied by github.com/64bit/async-openai
(MIT, like OpenAI's spec: https://github.com/openai/openai-openapi/blob/master/LICENSE).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "portfolio_batch" / "local" / "openapi" / "openai-schemas.json"
SUBSET = ROOT / "tests" / "data" / "openapi" / "batch-subset.yaml"

# The batch endpoints and the request schema of the JSON body each takes.
ENDPOINTS = {
    "/v1/chat/completions": "CreateChatCompletionRequest",
    "/v1/responses": "CreateResponse",
    "/v1/completions": "CreateCompletionRequest",
    "/v1/embeddings": "CreateEmbeddingRequest",
    "/v1/moderations": "CreateModerationRequest",
    "/v1/images/generations": "CreateImageRequest",
    "/v1/images/edits": "EditImageBodyJsonParam",
    "/v1/videos": "CreateVideoJsonBody",
}
RESPONSES = [
    "Batch",
    "ListBatchesResponse",
    "OpenAIFile",
    "ListFilesResponse",
    "DeleteFileResponse",
    "ErrorResponse",
]
FROM_SUBSET = ["BatchRequestInput", "BatchRequestOutput"]
DROP = {"description", "title", "example", "examples", "default", "deprecated", "format"}
# Keywords whose value is a schema, a list of schemas, or a map of schemas.
ONE = {"items", "additionalProperties", "not", "propertyNames", "contains", "if", "then", "else"}
MANY = {"anyOf", "oneOf", "allOf", "prefixItems"}
MAP = {"properties", "patternProperties", "$defs", "definitions"}


def clean(schema: Any, name: str) -> Any:
    """One schema, stripped of annotations, with ``nullable`` and ``$recursiveRef`` rewritten."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in DROP or key.startswith("x-") or key in ("$recursiveAnchor", "nullable"):
            continue
        if key == "$recursiveRef":
            out["$ref"] = f"#/components/schemas/{name}"
        elif key in ONE:
            out[key] = clean(value, name)
        elif key == "oneOf":
            out["anyOf"] = [clean(v, name) for v in value]
        elif key in MANY:
            out[key] = [clean(v, name) for v in value]
        elif key in MAP:
            out[key] = {k: clean(v, name) for k, v in value.items()}
        else:
            out[key] = value
    if "$ref" in out and len(out) > 1:
        # JSON Schema draft 7 validators ignore a $ref's siblings: keep them in force.
        out = {"allOf": [{"$ref": out.pop("$ref")}], **out}
    if schema.get("nullable") is True:
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        elif isinstance(kind, list):
            out["type"] = [*kind, "null"] if "null" not in kind else kind
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            refs(value, found)
    elif isinstance(node, list):
        for value in node:
            refs(value, found)


def closure(schemas: dict[str, Any], roots: list[str]) -> dict[str, Any]:
    picked: dict[str, Any] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in picked:
            continue
        picked[name] = clean(schemas[name], name)
        found: set[str] = set()
        refs(picked[name], found)
        todo.extend(sorted(found - set(picked)))
    return dict(sorted(picked.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="OpenAI's openapi.yaml (async-openai's copy)")
    parser.add_argument("--source", default="github.com/64bit/async-openai openapi.yaml")
    args = parser.parse_args()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec = yaml.load(args.spec.read_text(), Loader=loader)
    subset = yaml.load(SUBSET.read_text(), Loader=loader)
    schemas = spec["components"]["schemas"]
    picked = closure(schemas, [*ENDPOINTS.values(), *RESPONSES])
    for name in FROM_SUBSET:
        picked[name] = clean(subset["components"]["schemas"][name], name)
    document = {
        "_about": (
            "Request and response schemas extracted from OpenAI's OpenAPI spec by "
            "scripts/vendor_openai_schemas.py; MIT licence, see LICENSE-openai-openapi.txt."
        ),
        "_source": args.source,
        "_spec_version": spec["info"]["version"],
        "endpoints": ENDPOINTS,
        "components": {"schemas": picked},
    }
    OUT.write_text(json.dumps(document, sort_keys=False, separators=(",", ":"), default=str))
    print(f"{OUT.relative_to(ROOT)}: {len(picked)} schemas, {OUT.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
