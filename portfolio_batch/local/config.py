"""The local server's settings: limits, the simulated clock and the fault injection knobs.

Every key can be given to ``serve(**config)``, ``run(**config)`` and changed on a running server
with ``LocalServer.configure(**config)``:

    >>> cfg = ServerConfig()
    >>> cfg.update(fault_rate_429=0.5, seed=1)
    >>> cfg.fault_rate_429
    0.5
"""

from __future__ import annotations

import copy
import dataclasses
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from portfolio_batch.errors import InputError

__all__ = ["ENDPOINT_NAMES", "ServerConfig"]

MiB = 1024 * 1024

# The names ``fault_endpoints`` accepts: one per API route.
ENDPOINT_NAMES = frozenset(
    {
        "files.create",
        "files.list",
        "files.retrieve",
        "files.delete",
        "files.content",
        "batches.create",
        "batches.list",
        "batches.retrieve",
        "batches.cancel",
        "chat.completions",
        "completions",
        "embeddings",
        "moderations",
        "responses",
    }
)


@dataclass(kw_only=True)
class ServerConfig:
    """Settings of one local server; all optional.

    Limits: ``max_upload_bytes`` (200 MiB), ``max_requests_per_batch`` (50,000),
    ``max_enqueued_tokens`` (None: no cap; prompt tokens of this server's validating, in_progress
    and finalizing batches of one model), ``completion_window_seconds`` (24 h; small values make
    ``expired`` testable), ``context_tokens`` (None: the engine's context length),
    ``max_concurrent_batches`` (4).

    Simulation and faults: ``request_delay`` (seconds per batch request), ``latency`` (seconds added
    to every API call), ``fault_rate_429`` / ``fault_rate_500`` (per API call, on the routes in
    ``fault_endpoints``, default all; answered before the server acts), ``fault_rate_lost_reply``
    (per API call there: the server carries the request out, then answers a 500, as a reply lost
    on the way back: a retried POST makes a second object), ``retry_after`` (seconds in the
    429's ``retry-after``),
    ``cut_download_after_bytes`` (file downloads stop after that many bytes: the first download of
    each file, or at ``cut_download_rate`` if set), ``malformed_output_rate`` (output lines written
    truncated), ``seed`` (fault randomness is deterministic for a seed).

    Clock: ``clock_offset`` (seconds added to the server's clock for every timestamp, deadline and
    file expiry): ``configure(clock_offset=31 * 86400)`` is a month later, when OpenAI has deleted
    a batch's files (``expires_at`` passed) and any batch still running has expired.

    Behaviours seen on the live API: ``output_file_lag_polls`` (a completed batch shows
    ``output_file_id: null`` to that many retrievals first), ``empty_error_file_id`` (a completed
    batch with no error file says ``error_file_id: ""``), ``max_batches_per_hour`` (creations per
    rolling hour, 2,000 as on OpenAI; then a 429; None: no limit), ``batch_usage_chat_fields``
    (the Batch ``usage`` also carries zeroed chat-style ``prompt_tokens``/``completion_tokens``
    fields next to the Responses-style ones).

    Gemini's batch routes (``local/gemini.py``): ``gemini_shuffle_results`` (a job's responses
    file in shuffled order, not input order), ``gemini_stuck_jobs`` (jobs created while it is on
    stay BATCH_STATE_RUNNING once done, past 24 h, and expire at 48 h with no responses file).

    Lost creates on Anthropic's and Gemini's routes: ``anthropic_lost_creates`` /
    ``gemini_lost_creates`` (the next that many batch creates are carried out, then their answer
    is lost), ``lost_create_answer`` (how: ``"drop"``, the connection cut once the headers are
    sent, as a timeout or a connection lost on the way back; ``"500"``, a server error).
    """

    max_upload_bytes: int = 200 * MiB
    max_requests_per_batch: int = 50_000
    max_enqueued_tokens: int | None = None
    completion_window_seconds: float = 24 * 3600
    context_tokens: int | None = None
    max_concurrent_batches: int = 4
    request_delay: float = 0.0
    latency: float = 0.0
    fault_rate_429: float = 0.0
    fault_rate_500: float = 0.0
    fault_rate_lost_reply: float = 0.0
    fault_endpoints: frozenset[str] | None = None
    retry_after: float = 0.05
    cut_download_after_bytes: int | None = None
    cut_download_rate: float | None = None
    malformed_output_rate: float = 0.0
    seed: int = 0
    clock_offset: float = 0.0
    output_file_lag_polls: int = 0
    empty_error_file_id: bool = False
    max_batches_per_hour: int | None = 2000
    batch_usage_chat_fields: bool = False
    gemini_shuffle_results: bool = False
    gemini_stuck_jobs: bool = False
    anthropic_lost_creates: int = 0
    gemini_lost_creates: int = 0
    lost_create_answer: str = "drop"
    _rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._validate()
        self._rng.seed(self.seed)

    def now(self) -> float:
        """The server's clock: real time plus ``clock_offset``."""
        return time.time() + self.clock_offset

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]

    def update(self, **config: Any) -> None:
        """Change settings; unknown keys and out-of-range values raise ``InputError`` and change
        nothing."""
        unknown = sorted(set(config) - set(self.keys()))
        if unknown:
            raise InputError(
                f"Unknown local server setting(s) {unknown}; valid settings are {self.keys()}."
            )
        candidate = copy.copy(self)
        for key, value in config.items():
            setattr(candidate, key, value)
        candidate._validate()
        for key in config:
            setattr(self, key, getattr(candidate, key))
        if "seed" in config:
            with self._lock:
                self._rng.seed(self.seed)

    def _validate(self) -> None:
        for key in (
            "fault_rate_429",
            "fault_rate_500",
            "fault_rate_lost_reply",
            "malformed_output_rate",
        ):
            rate = getattr(self, key)
            if not 0.0 <= float(rate) <= 1.0:
                raise InputError(f"Local server setting {key}={rate!r} must be between 0 and 1.")
        if self.cut_download_rate is not None and not 0.0 <= self.cut_download_rate < 1.0:
            raise InputError(
                f"cut_download_rate={self.cut_download_rate!r} must be in [0, 1) so that a "
                "retrying client eventually gets the whole file."
            )
        if self.fault_endpoints is not None:
            names = (
                {self.fault_endpoints}
                if isinstance(self.fault_endpoints, str)
                else set(self.fault_endpoints)
            )
            bad = sorted(names - ENDPOINT_NAMES)
            if bad:
                raise InputError(
                    f"fault_endpoints has unknown route(s) {bad}; use names from {sorted(ENDPOINT_NAMES)}."
                )
            self.fault_endpoints = frozenset(names)
        for key in ("max_upload_bytes", "max_requests_per_batch", "max_concurrent_batches"):
            if int(getattr(self, key)) < 1:
                raise InputError(f"Local server setting {key} must be at least 1.")
        if self.max_batches_per_hour is not None and int(self.max_batches_per_hour) < 1:
            raise InputError(
                "Local server setting max_batches_per_hour must be at least 1, or None for no limit."
            )
        for key in ("anthropic_lost_creates", "gemini_lost_creates"):
            if int(getattr(self, key)) < 0:
                raise InputError(f"Local server setting {key} must be 0 or more.")
        if self.lost_create_answer not in ("drop", "500"):
            raise InputError(
                f"lost_create_answer={self.lost_create_answer!r}: use 'drop' (the connection "
                "cut) or '500' (a server error)."
            )
        if int(self.output_file_lag_polls) < 0:
            raise InputError("Local server setting output_file_lag_polls must be 0 or more.")

    def chance(self, rate: float) -> bool:
        """True with probability ``rate``, drawn from the seeded generator."""
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def _take(self, counter: str) -> bool:
        """Use one of a countdown setting (``anthropic_lost_creates``...): True while it was
        above 0."""
        with self._lock:
            left = int(getattr(self, counter))
            if left > 0:
                setattr(self, counter, left - 1)
            return left > 0

    def faults_apply(self, route: str) -> bool:
        return self.fault_endpoints is None or route in self.fault_endpoints
