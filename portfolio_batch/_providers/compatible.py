"""OpenAI-compatible batch providers: a small table of what differs, and a client for the ones
whose Files + Batches API is OpenAI's.

Only ``provider=`` selects these (``pb.client(provider="groq")``, the CLI's ``--provider``):
``provider_of(model)`` never guesses them from a model name, since their models
(``llama-3.3-70b-versatile``, ``meta-llama/...``, ``mistral-...``) are open models that other
providers and self-hosted servers serve too. A lone ``GROQ_API_KEY`` does not select Groq either.

A provider goes through ``openai.OpenAI(base_url=...)`` only when its Files + Batches API is
OpenAI's as it is (lines ``{custom_id, method, url, body}``, ``/v1/files`` with
``purpose=batch``, ``/v1/batches`` with OpenAI's statuses and ``metadata``): the pipeline's
creation rule finds a batch whose answer was lost by its ``metadata["pb_sha256"]``, and polling
reads OpenAI's lower-case statuses, so a provider without them cannot be made to work by
rewriting lines. The others are in the table so that asking for them says what is missing
instead of failing half-way.

    >>> PROVIDERS["groq"].openai_batches, PROVIDERS["mistral"].openai_batches
    (True, False)
    >>> c = client("groq", api_key="gsk-test")            # doctest: +SKIP
    >>> str(c.base_url), c.label                          # doctest: +SKIP
    ('https://api.groq.com/openai/v1/', 'groq')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Self

import openai

from portfolio_batch._providers._protocol import PORTABLE_ID, Limits
from portfolio_batch.errors import InputError

__all__ = ["PROVIDERS", "SUPPORTED", "Compatible", "CompatibleClient", "client"]

_MB = 1_000_000


@dataclass(frozen=True, kw_only=True)
class Compatible:
    """One OpenAI-compatible batch provider: where it is, its key, its limits and how its batch
    API differs from OpenAI's. ``None`` means not stated by any source we read."""

    name: str  # the provider= / --provider value, and the head of backend_name
    title: str
    base_url: str  # default; <base_url_var> overrides it
    key_vars: tuple[str, ...]  # first set wins
    base_url_var: str  # ours (Groq's SDK reads the same one)
    openai_batches: bool  # Files + Batches exactly OpenAI's: goes through openai.OpenAI
    line_shape: str  # the input line the provider takes
    max_requests: int | None  # per batch
    max_bytes: int | None  # per input file
    id_rule: str | None  # custom_id rule beyond uniqueness (a regex)
    windows: tuple[str, ...] | None  # completion windows accepted (a range: first..last)
    missing: str = ""  # why it cannot go through openai.OpenAI (when openai_batches is False)
    source: str = ""

    @property
    def limits(self) -> Limits | None:
        """The provider's ``Limits`` when its request and byte limits are known."""
        if self.max_requests is None or self.max_bytes is None:
            return None
        return Limits(
            max_requests=self.max_requests,
            max_bytes=self.max_bytes,
            id_pattern=self.id_rule or PORTABLE_ID,
        )


_OPENAI_LINE = "{custom_id, method, url, body}"
_BODY_LINE = "{custom_id, body} (no method/url)"

PROVIDERS: dict[str, Compatible] = {
    p.name: p
    for p in (
        Compatible(
            name="groq",
            title="Groq",
            base_url="https://api.groq.com/openai/v1",
            key_vars=("GROQ_API_KEY",),
            base_url_var="GROQ_BASE_URL",
            openai_batches=True,
            line_shape=_OPENAI_LINE,
            # not in providers.md: Groq's batch guide (console.groq.com/docs/batch) as quoted by
            # secondary sources gives 50,000 lines and 100 MB (another 200 MB): the lower is kept
            max_requests=50_000,
            max_bytes=100 * _MB,
            id_rule=None,
            windows=("24h", "7d"),
            source="providers.md: 'Groq: OpenAI's files + batches exactly', window '24 h to 7 d'",
        ),
        Compatible(
            name="together",
            title="Together AI",
            base_url="https://api.together.xyz/v1",
            key_vars=("TOGETHER_API_KEY",),
            base_url_var="TOGETHER_BASE_URL",
            openai_batches=False,
            line_shape=_BODY_LINE,
            max_requests=50_000,
            max_bytes=100 * _MB,
            id_rule=r"^.{1,64}$",
            windows=None,
            missing="its batches carry no metadata (our creation rule finds a batch by "
            "metadata['pb_sha256']), its lines are {custom_id, body} without method/url, and "
            "its job statuses are its own upper-case words (VALIDATING, IN_PROGRESS, ...)",
            source="providers.md: lines {custom_id, body}, 50k / 100 MB, ids <= 64 chars, "
            "batch metadata none; statuses: docs.together.ai batch API (not in providers.md)",
        ),
        Compatible(
            name="mistral",
            title="Mistral",
            base_url="https://api.mistral.ai/v1",
            key_vars=("MISTRAL_API_KEY",),
            base_url_var="MISTRAL_BASE_URL",
            openai_batches=False,
            line_shape=_BODY_LINE,
            max_requests=1_000_000,
            max_bytes=None,
            id_rule=None,
            windows=None,
            missing="it is Mistral's own jobs API (/v1/batch/jobs with input_files, model "
            "and timeout_hours), with statuses QUEUED, RUNNING, SUCCESS, ..., not OpenAI's "
            "/v1/batches",
            source="providers.md: files or inline, lines {custom_id, body}, up to 1M requests, "
            "timeout_hours, statuses QUEUED..CANCELLED; docs.mistral.ai batch",
        ),
        Compatible(
            name="fireworks",
            title="Fireworks AI",
            base_url="https://api.fireworks.ai/inference/v1",
            key_vars=("FIREWORKS_API_KEY",),
            base_url_var="FIREWORKS_BASE_URL",
            openai_batches=False,
            line_shape=_BODY_LINE,
            max_requests=None,
            max_bytes=500 * _MB,
            id_rule=None,
            windows=None,
            missing="its batch inference jobs are its own API with JOB_STATE_* statuses, not "
            "OpenAI's /v1/batches",
            source="providers.md: lines {custom_id, body}, < 500 MB, JOB_STATE_* statuses; "
            "docs.fireworks.ai batch inference",
        ),
    )
}

# The providers that work: pb.client(provider=<name>) and the CLI's --provider <name>.
SUPPORTED = tuple(name for name, p in PROVIDERS.items() if p.openai_batches)


class CompatibleClient(openai.OpenAI):
    """``openai.OpenAI`` for a provider whose Files + Batches API is OpenAI's; ``label`` is its
    name in ``_backend.backend_name`` (``"groq"``, or ``"groq:<base url>"`` for another
    endpoint), kept by ``copy``/``with_options``."""

    label: str

    def __init__(self, *, label: str = "compatible", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label = label

    def copy(self, *args: Any, **kwargs: Any) -> Self:
        made = super().copy(*args, **kwargs)
        made.label = self.label
        return made

    with_options = copy

    @property
    def spec(self) -> Compatible:
        """The provider's row of ``PROVIDERS``."""
        return PROVIDERS[self.label.split(":", 1)[0]]


def client(name: str, *, engine: str | None = None, **overrides: Any) -> CompatibleClient:
    """A client for the OpenAI-compatible provider ``name``, key and base URL from the
    environment (``overrides`` go to ``openai.OpenAI``: ``max_retries=``, ``timeout=`` ...).

    Raises ``InputError`` for a provider whose batch API is not OpenAI's (naming what is
    missing), for ``engine=`` (the embedded local server is not Groq), and for a missing key
    (naming its variable).

    >>> client("mistral")
    Traceback (most recent call last):
    ...
    portfolio_batch.errors.InputError: provider='mistral': Mistral's batch API is not OpenAI's: ...
    """
    spec = PROVIDERS.get(name)
    if spec is None:
        raise InputError(
            f"provider={name!r} is not an OpenAI-compatible batch provider we know; use one of "
            f"{', '.join(PROVIDERS)}."
        )
    if not spec.openai_batches:
        raise InputError(
            f"provider={name!r}: {spec.title}'s batch API is not OpenAI's: {spec.missing}. "
            "portfolio_batch cannot run batches there; use provider "
            f"{', '.join(repr(s) for s in SUPPORTED)}, 'openai', 'anthropic' or 'gemini', or "
            "send the shards with the provider's own tools."
        )
    if engine is not None:
        raise InputError(
            f"engine={engine!r} selects the embedded local server, not {spec.title}. For an "
            f"offline {spec.title} run, set {spec.base_url_var} to a local server's url "
            f"(portfolio-batch serve) and {spec.key_vars[0]} to its key; or drop provider={name!r}."
        )
    key = overrides.pop("api_key", None) or next(
        (os.environ[v] for v in spec.key_vars if os.environ.get(v)), None
    )
    if not key:
        raise InputError(
            f"provider={name!r} needs {' or '.join(spec.key_vars)}, which is not set. Set it to "
            f"your {spec.title} API key ({spec.base_url_var} reaches another endpoint)."
        )
    base = str(
        overrides.pop("base_url", None) or os.environ.get(spec.base_url_var) or spec.base_url
    ).rstrip("/")
    # another endpoint is another place for batches: its url is part of the name (never the key)
    label = name if base == spec.base_url else f"{name}:{base}"
    return CompatibleClient(label=label, base_url=base, api_key=key, **overrides)
