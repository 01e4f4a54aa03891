"""Files API of the local server through the real openai SDK: upload, list, retrieve, content,
delete, limits, auth and id validation. Every JSON answer is checked against the shared spec."""

from __future__ import annotations

import io
from typing import Any

import httpx2
import openai
import orjson
import pytest
from test_local_support import create_batch, jsonl, risk_line, upload, validate, wait, wire

from portfolio_batch.local import serve


def test_upload_retrieve_content_delete(openai_client: Any) -> None:
    lines = [risk_line(i) for i in range(3)]
    created = wire(
        openai_client.files.with_raw_response.create(
            file=("positions.jsonl", io.BytesIO(jsonl(lines))), purpose="batch"
        ),
        "OpenAIFile",
    )
    assert created["id"].startswith("file-")
    assert created["purpose"] == "batch"
    assert created["filename"] == "positions.jsonl"
    assert created["bytes"] == len(jsonl(lines))
    assert created["status"] == "processed"
    assert created["expires_at"] == created["created_at"] + 30 * 24 * 3600

    again = wire(openai_client.files.with_raw_response.retrieve(created["id"]), "OpenAIFile")
    assert again == created
    assert openai_client.files.content(created["id"]).content == jsonl(lines)

    with openai_client.files.with_streaming_response.content(created["id"]) as response:
        streamed = b"".join(response.iter_bytes())
    assert streamed == jsonl(lines)

    deleted = wire(
        openai_client.files.with_raw_response.delete(created["id"]), "DeleteFileResponse"
    )
    assert deleted == {"id": created["id"], "object": "file", "deleted": True}
    with pytest.raises(openai.NotFoundError) as info:
        openai_client.files.retrieve(created["id"])
    assert info.value.body["message"] == f"No such File object: {created['id']}"
    with pytest.raises(openai.NotFoundError):
        openai_client.files.content(created["id"])


def test_list_filters_orders_and_paginates(openai_client: Any) -> None:
    ids = [upload(openai_client, [risk_line(i)], name=f"f{i}.jsonl").id for i in range(5)]
    other = openai_client.files.create(
        file=("notes.txt", io.BytesIO(b"hello")), purpose="user_data"
    )

    everything = wire(openai_client.files.with_raw_response.list(), "ListFilesResponse")
    assert [f["id"] for f in everything["data"]] == [other.id, *reversed(ids)]  # newest first
    assert everything["has_more"] is False

    batch_only = wire(
        openai_client.files.with_raw_response.list(purpose="batch", order="asc"),
        "ListFilesResponse",
    )
    assert [f["id"] for f in batch_only["data"]] == ids
    assert (batch_only["first_id"], batch_only["last_id"]) == (ids[0], ids[-1])

    page = wire(
        openai_client.files.with_raw_response.list(
            purpose="batch", order="asc", limit=2, after=ids[1]
        ),
        "ListFilesResponse",
    )
    assert [f["id"] for f in page["data"]] == ids[2:4]
    assert page["has_more"] is True
    # The SDK's own cursor pagination walks every page.
    assert [f.id for f in openai_client.files.list(purpose="batch", order="asc", limit=2)] == ids

    with pytest.raises(openai.BadRequestError) as info:
        openai_client.files.list(order="sideways")
    assert info.value.body["param"] == "order"


def test_upload_rejections_say_what_to_do(local_server: Any, openai_client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.files.create(file=("requests.csv", io.BytesIO(b"a,b\n")), purpose="batch")
    assert info.value.body["message"] == "Invalid file format for Batch API. Must be .jsonl"

    with pytest.raises(openai.BadRequestError) as info:
        openai_client.files.create(file=("r.jsonl", io.BytesIO(b"{}\n")), purpose="homework")  # type: ignore[arg-type]
    assert info.value.body["param"] == "purpose"

    local_server.configure(max_upload_bytes=1000)
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.files.create(file=("big.jsonl", io.BytesIO(b"x" * 5000)), purpose="batch")
    assert info.value.body["code"] == "file_too_large"
    assert "at most 1000 bytes" in info.value.body["message"]
    # Nothing half-written is left behind or listed.
    assert openai_client.files.list().data == []
    assert not list((local_server.data_dir / "files").glob("*.part"))
    exact = openai_client.files.create(file=("ok.jsonl", io.BytesIO(b"y" * 1000)), purpose="batch")
    assert exact.bytes == 1000


def test_an_upload_far_over_the_limit_is_a_400_not_a_dropped_connection(local_server: Any) -> None:
    # Far past the limit the server stops keeping the body but still reads it to its end: the
    # SDK gets an answer it can show, not a reset connection it would retry from the start.
    local_server.configure(max_upload_bytes=1000)
    strict = local_server.client(max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        strict.files.create(file=("huge.jsonl", io.BytesIO(b"x" * 8_000_000)), purpose="batch")
    assert info.value.body["code"] == "file_too_large"
    assert "at most 1000 bytes" in info.value.body["message"]
    assert strict.files.list().data == []


def test_output_expires_after_sets_file_expiry(openai_client: Any) -> None:
    file = openai_client.files.create(
        file=("r.jsonl", io.BytesIO(jsonl([risk_line(0)]))),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )
    assert file.expires_at == file.created_at + 7200


def test_batch_results_are_kept_thirty_days_by_default(openai_client: Any) -> None:
    batch, _ = wait(openai_client, create_batch(openai_client, [risk_line(0)]).id)
    out = openai_client.files.retrieve(batch["output_file_id"])
    assert out.purpose == "batch_output"
    assert out.expires_at == out.created_at + 30 * 24 * 3600


def test_files_are_gone_once_the_server_clock_passes_expires_at(
    local_server: Any, openai_client: Any
) -> None:
    short = openai_client.files.create(
        file=("short.jsonl", io.BytesIO(jsonl([risk_line(0)]))),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    month = openai_client.files.create(
        file=("month.jsonl", io.BytesIO(jsonl([risk_line(1)]))), purpose="batch"
    )
    local_server.configure(clock_offset=3600)  # an hour later: OpenAI has deleted the first
    with pytest.raises(openai.NotFoundError):
        openai_client.files.retrieve(short.id)
    with pytest.raises(openai.NotFoundError):
        openai_client.files.content(short.id)
    with pytest.raises(openai.NotFoundError):
        openai_client.batches.create(
            input_file_id=short.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert [f.id for f in openai_client.files.list()] == [month.id]
    assert openai_client.files.retrieve(month.id).id == month.id
    local_server.configure(clock_offset=31 * 24 * 3600)  # a month later: both are gone
    assert list(openai_client.files.list()) == []
    uploaded = openai_client.files.create(
        file=("new.jsonl", io.BytesIO(jsonl([risk_line(2)]))), purpose="batch"
    )
    assert uploaded.created_at >= month.created_at + 31 * 24 * 3600  # the clock moved for all
    assert openai_client.files.retrieve(uploaded.id).id == uploaded.id


@pytest.mark.parametrize(
    "bad_id",
    [
        "../../../../etc/passwd",
        "..%2F..%2Fsecret",
        "file-..",
        "file-abc/../../x",
        "file-" + "a" * 300,
    ],
)
def test_ids_cannot_reach_outside_the_data_dir(
    local_server: Any, openai_client: Any, bad_id: str
) -> None:
    secret = local_server.data_dir.parent / "secret.jsonl"
    secret.write_text("do not serve me")
    for call in (
        openai_client.files.retrieve,
        openai_client.files.content,
        openai_client.files.delete,
        openai_client.batches.retrieve,
        openai_client.batches.cancel,
    ):
        with pytest.raises((openai.NotFoundError, openai.BadRequestError)):
            call(bad_id)
    # The raw URL (no client-side normalisation) is rejected too.
    response = httpx2.get(
        f"{local_server.base_url}/files/{bad_id}/content", headers={"Authorization": "Bearer k"}
    )
    assert response.status_code in (400, 404)
    assert b"do not serve me" not in response.content
    assert secret.exists()


def test_bearer_token_required(local_server: Any) -> None:
    response = httpx2.get(f"{local_server.base_url}/files")
    assert response.status_code == 401
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "API key" in body["error"]["message"]
    assert (
        httpx2.get(
            f"{local_server.base_url}/files", headers={"Authorization": "Basic abc"}
        ).status_code
        == 401
    )
    assert (
        httpx2.get(
            f"{local_server.base_url}/files", headers={"Authorization": "Bearer any"}
        ).status_code
        == 200
    )


def test_configured_api_key_is_enforced_and_never_echoed(tmp_path: Any) -> None:
    with serve(api_key="sk-local-secret", data_dir=tmp_path / "data") as server:
        with pytest.raises(openai.AuthenticationError) as info:
            server.client(api_key="sk-wrong-key").files.list()
        assert info.value.body["code"] == "invalid_api_key"
        assert "sk-wrong-key" not in info.value.body["message"]
        assert server.client().files.list().data == []
        upload(server.client(), [risk_line(0)])
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert b"sk-local-secret" not in stored


def test_unknown_route_and_bad_json_use_openai_error_shape(local_server: Any) -> None:
    headers = {"Authorization": "Bearer k"}
    missing = httpx2.get(f"{local_server.base_url}/nothing-here", headers=headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Invalid URL (GET /v1/nothing-here)"
    bad = httpx2.post(f"{local_server.base_url}/batches", headers=headers, content=b"{not json")
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"


def test_content_supports_range_requests(local_server: Any, openai_client: Any) -> None:
    data = jsonl([risk_line(i) for i in range(20)])
    file = openai_client.files.create(file=("r.jsonl", io.BytesIO(data)), purpose="batch")
    url = f"{local_server.base_url}/files/{file.id}/content"
    headers = {"Authorization": "Bearer k"}
    part = httpx2.get(url, headers={**headers, "Range": "bytes=100-"})
    assert part.status_code == 206
    assert part.content == data[100:]
    assert part.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    middle = httpx2.get(url, headers={**headers, "Range": "bytes=10-19"})
    assert middle.content == data[10:20]
    outside = httpx2.get(url, headers={**headers, "Range": f"bytes={len(data) + 5}-"})
    assert outside.status_code == 416


def test_server_restart_on_same_data_dir_keeps_files(tmp_path: Any) -> None:
    lines = [risk_line(i) for i in range(2)]
    with serve(data_dir=tmp_path / "data") as server:
        file_id = upload(server.client(), lines).id
    with serve(data_dir=tmp_path / "data") as server:
        client = server.client()
        assert client.files.retrieve(file_id).bytes == len(jsonl(lines))
        assert [
            orjson.loads(x) for x in client.files.content(file_id).content.splitlines()
        ] == lines
        validate(client.files.with_raw_response.list().http_response.json(), "ListFilesResponse")


@pytest.mark.parametrize("failure", ["engine", "thread"])
def test_failed_start_frees_the_port_and_state(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    import socket

    import uvicorn

    import portfolio_batch.local.server as server_module
    from portfolio_batch.errors import LocalServerError

    if failure == "engine":

        def no_engine(name: str) -> Any:
            raise LocalServerError(f"engine {name} needs llama-cpp-python; pip install it.")

        monkeypatch.setattr(server_module, "load_engine", no_engine)
    else:
        monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)

    server = server_module.LocalServer(engine="rules", data_dir=tmp_path / "data")
    with pytest.raises(LocalServerError) as caught:
        server.start()
    assert ("llama-cpp-python" if failure == "engine" else "did not start") in str(caught.value)

    # The port is free again: binding it without SO_REUSEADDR fails while a socket still holds it.
    with socket.socket() as probe:
        probe.bind((server.host, server.port))
    with pytest.raises(LocalServerError, match="not running"):
        server.state  # noqa: B018

    monkeypatch.undo()
    with server:  # a later start() works
        assert server.client().files.list().data == []
