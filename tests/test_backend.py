"""client(): which backend the environment selects, logged once, never the key."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import openai
import pytest

import portfolio_batch as pb
from portfolio_batch import InputError
from portfolio_batch._backend import backend_name, poll_interval_bounds, reset_client
from portfolio_batch._home import home


@pytest.fixture(autouse=True)
def _fresh_backend() -> Iterator[None]:
    reset_client()
    yield
    reset_client()


def test_openai_key_selects_openai_and_the_key_is_not_logged(monkeypatch, caplog) -> None:
    # Split so that the repository holds no key-shaped literal.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-" + "test-do-not-log-1234")
    caplog.set_level(logging.INFO, logger="portfolio_batch")
    c = pb.client()
    assert type(c) is openai.OpenAI
    assert c.base_url.host == "api.openai.com"
    assert backend_name(c) == "openai"
    assert poll_interval_bounds(c) == (5.0, 60.0)
    pb.client()
    messages = [r.getMessage() for r in caplog.records if r.name == "portfolio_batch"]
    assert len(messages) == 1 and "OpenAI" in messages[0]
    assert "sk-test" not in caplog.text


def test_azure_trio_selects_azure(monkeypatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://my-res.openai.azure.com")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "az-test-key")
    monkeypatch.setenv("OPENAI_API_VERSION", "2024-10-21")
    c = pb.client()
    assert isinstance(c, openai.AzureOpenAI)
    assert backend_name(c) == "azure:my-res.openai.azure.com"
    assert "/openai/" in str(c.base_url)


def test_incomplete_azure_settings_are_an_error_not_a_silent_local_run(monkeypatch) -> None:
    # Someone who set Azure's endpoint and key meant to reach Azure: falling back to the local
    # server would hand them made-up answers while they think the API ran.
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://my-res.openai.azure.com")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-test-key")
    with pytest.raises(InputError, match=r"OPENAI_API_VERSION missing.*unset"):
        pb.client()
    # An explicit engine (the CLI's --engine with no key) or an OpenAI key still decides.
    assert backend_name(pb.client(engine="rules")) == "local:embedded:rules"
    monkeypatch.setenv("OPENAI_API_KEY", "openai-test-key")
    assert type(pb.client()) is openai.OpenAI


def test_no_key_starts_one_embedded_server_whose_data_survives(caplog) -> None:
    caplog.set_level(logging.INFO, logger="portfolio_batch")
    first = pb.client()
    second = pb.client(max_retries=5)
    assert first.base_url.host == "127.0.0.1"
    assert str(first.base_url) == str(second.base_url)  # one server per process
    assert second.max_retries == 5
    assert backend_name(first) == "local:embedded:rules"
    assert poll_interval_bounds(first) == (0.05, 1.0)
    logged = [r.getMessage() for r in caplog.records if r.name == "portfolio_batch"]
    assert len(logged) == 1 and "embedded local server" in logged[0]
    uploaded = first.files.create(
        file=(
            "x.jsonl",
            b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{}}\n',
        ),
        purpose="batch",
    )
    assert (home() / "local" / "rules").is_dir()
    reset_client()  # as a new process would: a new server on another port, the same data
    third = pb.client()
    assert backend_name(third) == "local:embedded:rules"
    assert third.files.retrieve(uploaded.id).id == uploaded.id


def test_engine_override_selects_the_local_server_even_with_a_key(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-ignored")
    c = pb.client(engine="rules")
    assert c.base_url.host == "127.0.0.1"
    assert backend_name(c) == "local:embedded:rules"


def test_other_base_urls_are_named_by_their_url() -> None:
    c = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="x")
    assert backend_name(c) == "local:http://127.0.0.1:9/v1"


def test_openai_organisation_and_project_scope_the_backend_name() -> None:
    c = openai.OpenAI(api_key="sk-x", organization="org-1", project="proj_2")
    assert backend_name(c) == "openai:org-1:proj_2"
    assert "sk-x" not in backend_name(c)


def test_a_missing_dependency_of_the_local_server_says_to_reinstall(monkeypatch) -> None:
    # A fresh clone whose install lacked a dependency (fastjsonschema) was told only to set
    # OPENAI_API_KEY, i.e. to pay for OpenAI, when reinstalling fixes it.
    import builtins

    real_import = builtins.__import__

    def failing_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "portfolio_batch.local":
            raise ModuleNotFoundError("No module named 'fastjsonschema'", name="fastjsonschema")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(
        pb.LocalServerError,
        match=r"^The embedded local server cannot be imported: its dependency 'fastjsonschema' is "
        r"missing \(No module named 'fastjsonschema'\); install it with pip install -e \. in "
        r"portfolio_batch's directory \(or make demo\), or set OPENAI_API_KEY to use OpenAI$",
    ):
        pb.client()
