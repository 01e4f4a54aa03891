"""Scripted check: the OpenAI **Node** SDK runs the Files + Batches flow against the local server.

Installs the ``openai`` npm package into a temporary directory (needs ``node``, ``npm`` and the
npm registry), starts a local server (rules engine, a random key), runs upload → create →
retrieve/list → poll → download → cancel → delete with the Node client, and checks every answer it
received against the vendored OpenAI schemas (``Batch``, ``OpenAIFile``, lists,
``BatchRequestOutput``) plus its ``x-request-id``. Not in the test suite: it needs the network.

    .venv/bin/python bench/node_sdk_check.py [--sdk-version 6]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import jsonschema

from portfolio_batch.local import serve
from portfolio_batch.local.validate import response_schema

NODE_FLOW = r"""
import OpenAI, { toFile } from "openai";

const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.API_KEY });
// requestId is left out for what came without an HTTP answer of its own (result lines, pages)
const emit = (name, obj, response) =>
  console.log(JSON.stringify({ name, obj, requestId: response ? (response.headers.get("x-request-id") ?? "") : undefined }));
const line = (i) => JSON.stringify({
  custom_id: `node-${i}`, method: "POST", url: "/v1/chat/completions",
  body: { model: "gpt-4o-mini", messages: [{ role: "user", content: `Say ${i}` }] },
});
const data = Buffer.from([0, 1, 2].map(line).join("\n") + "\n");

let r = await client.files.create({ file: await toFile(data, "node.jsonl"), purpose: "batch" }).withResponse();
emit("OpenAIFile", r.data, r.response);
const fileId = r.data.id;
r = await client.files.retrieve(fileId).withResponse();
emit("OpenAIFile", r.data, r.response);
const files = await client.files.list({ purpose: "batch" }).asResponse(); // the wire JSON of a page
emit("ListFilesResponse", await files.json(), files);

r = await client.batches.create({ input_file_id: fileId, endpoint: "/v1/chat/completions", completion_window: "24h", metadata: { sdk: "node" } }).withResponse();
emit("Batch", r.data, r.response);
let batch = r.data;
if (batch.status !== "validating") throw new Error(`create answered ${batch.status}`);
while (!["completed", "failed", "expired", "cancelled"].includes(batch.status)) {
  await new Promise((ok) => setTimeout(ok, 50));
  r = await client.batches.retrieve(batch.id).withResponse();
  emit("Batch", r.data, r.response);
  batch = r.data;
}
const page = await client.batches.list({ limit: 1 }).asResponse();
emit("ListBatchesResponse", await page.json(), page);
for await (const listed of client.batches.list({ limit: 1 })) emit("Batch", listed, null); // auto-paging

const content = await client.files.content(batch.output_file_id);
for (const raw of (await content.text()).split("\n").filter(Boolean)) emit("BatchRequestOutput", JSON.parse(raw), null);

const second = await client.batches.create({ input_file_id: fileId, endpoint: "/v1/chat/completions", completion_window: "24h" });
try {
  r = await client.batches.cancel(second.id).withResponse();
  emit("Batch", r.data, r.response);
} catch (err) {
  if (!(err instanceof OpenAI.BadRequestError)) throw err; // it had already ended
}
try {
  await client.batches.retrieve("batch_doesnotexist0000");
  throw new Error("an unknown batch was found");
} catch (err) {
  if (!(err instanceof OpenAI.NotFoundError)) throw err;
  emit("ErrorResponse", { error: err.error }, { headers: err.headers });
}
r = await client.files.delete(fileId).withResponse();
emit("DeleteFileResponse", r.data, r.response);
"""


def _no_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_nulls(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdk-version", default="6", help="npm version range of openai")
    args = parser.parse_args()
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed; this check needs Node.js and npm")
    with tempfile.TemporaryDirectory(prefix="pb-node-") as tmp:
        work = Path(tmp)
        (work / "package.json").write_text('{"type": "module", "private": true}')
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", f"openai@{args.sdk_version}"],
            cwd=work,
            check=True,
        )
        version = json.loads((work / "node_modules/openai/package.json").read_text())["version"]
        (work / "flow.mjs").write_text(NODE_FLOW)
        with serve(engine="rules", data_dir=work / "data") as server:
            env = {**os.environ, "BASE_URL": server.base_url, "API_KEY": str(server.api_key)}
            run = subprocess.run(
                ["node", "flow.mjs"], cwd=work, env=env, capture_output=True, text=True, timeout=120
            )
        if run.returncode != 0:
            print(run.stdout + run.stderr, file=sys.stderr)
            raise SystemExit(f"the Node SDK {version} flow failed")
        checked: dict[str, int] = {}
        for raw in run.stdout.splitlines():
            answer = json.loads(raw)
            name, obj = answer["name"], answer["obj"]
            if name != "ErrorResponse":
                obj = _no_nulls(obj)
            jsonschema.Draft202012Validator(response_schema(name)).validate(obj)
            if "requestId" in answer and not answer["requestId"].startswith("req_"):
                raise SystemExit(f"{name} answer without an x-request-id")
            checked[name] = checked.get(name, 0) + 1
    total = sum(checked.values())
    print(f"OpenAI Node SDK {version}: the flow ran; {total} answers valid against the spec:")
    for name, count in sorted(checked.items()):
        print(f"  {name:22} {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
