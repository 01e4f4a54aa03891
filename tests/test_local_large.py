"""A 50,000-request batch (the Batch API's maximum) on the rules engine, end to end through the SDK."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_local_support import risk_line, wait


@pytest.mark.slow
def test_fifty_thousand_requests(openai_client: Any, tmp_path: Path) -> None:
    n = 50_000
    path = tmp_path / "big.jsonl"
    template = orjson.dumps(risk_line(0))
    with path.open("wb") as out:
        for i in range(n):
            out.write(template.replace(b'"pos-0"', f'"pos-{i}"'.encode()) + b"\n")
    start = time.perf_counter()
    with path.open("rb") as handle:
        file = openai_client.files.create(file=handle, purpose="batch")
    batch = openai_client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    final, _ = wait(openai_client, batch.id, timeout=180)
    assert final["status"] == "completed"
    assert final["request_counts"] == {"total": n, "completed": n, "failed": 0}
    out_path = tmp_path / "out.jsonl"
    with openai_client.files.with_streaming_response.content(final["output_file_id"]) as response:
        response.stream_to_file(out_path)
    elapsed = time.perf_counter() - start
    seen = set()
    with out_path.open("rb") as handle:
        for line in handle:
            seen.add(orjson.loads(line)["custom_id"])
    assert len(seen) == n
    assert final["usage"]["input_tokens"] > 0
    assert elapsed < 120, f"50,000 requests took {elapsed:.1f} s"
