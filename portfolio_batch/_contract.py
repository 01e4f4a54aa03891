"""The data contract: the frames' columns, the statuses and what each set of them means, and the
colours that show them. Every other module reads these names from here and writes none itself.

It imports nothing from portfolio_batch, so the pipeline, the display, the CLI, the local server
and ``portfolio_batch.testing`` can all use it without loading one another.

    >>> from portfolio_batch._contract import TERMINAL, ResultRow
    >>> sorted(TERMINAL)
    ['cancelled', 'completed', 'expired', 'failed']
    >>> ResultRow._fields[:2]
    ('status', 'http_status')
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = [
    "ACTIVE",
    "ANSWER_COLUMNS",
    "BATCH_STATUSES",
    "CANCELLING",
    "COST_COLUMNS",
    "DEAD",
    "JOBS_COLUMNS",
    "JOBS_TABLE_COLUMNS",
    "JOB_STATUSES",
    "LEVEL_COLORS",
    "MANIFEST_COLUMNS",
    "MANIFEST_REQUIRED",
    "NON_DATA_COLUMNS",
    "OTHER_LEVEL_COLOR",
    "OTHER_STATUS_COLOR",
    "REQUEST_COLUMNS",
    "RESULT_COLUMNS",
    "RESULT_STATUSES",
    "RETRY_OF",
    "ROW_COLUMNS",
    "STATUS_COLORS",
    "TERMINAL",
    "TOKEN_COLUMNS",
    "UNSCORED_COLOR",
    "USAGE_COLUMNS",
    "ResultRow",
]

# -- batch statuses ------------------------------------------------------------------------------
# A batch's ``status`` on the server (OpenAI's Batch object), in lifecycle order. Each is in
# exactly one of ACTIVE, CANCELLING and TERMINAL.
BATCH_STATUSES = (
    "validating",
    "in_progress",
    "finalizing",
    "cancelling",
    "completed",
    "expired",
    "cancelled",
    "failed",
)
# Being worked on: answers may still come, and the batch counts against the enqueued-token limit.
ACTIVE = frozenset({"validating", "in_progress", "finalizing"})
# A cancel was asked: it ends as cancelled, with the answers it already has.
CANCELLING = frozenset({"cancelling"})
# Never changes again: poll() stops, aggregate_df() reads the files as final.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# Will not finish its requests: never reused; its shard is submitted again as a new batch.
DEAD = (TERMINAL - {"completed"}) | CANCELLING
# A jobs frame's ``status``: a shard is ``queued`` (registered, its batch not created yet), then
# its batch's status. In this order in progress displays.
JOB_STATUSES = ("queued", *BATCH_STATUSES)

# -- result statuses -----------------------------------------------------------------------------
# A results row's ``status``, one row per requested custom_id, in the order charts show them:
# succeeded (a valid answer), failed (an error line, or an HTTP error), expired / cancelled (the
# batch ended before the request ran), invalid_output (an answer that breaks the schema, is no
# JSON, is a refusal or echoes another key), missing (no line for it in any file).
RESULT_STATUSES = ("succeeded", "failed", "expired", "cancelled", "invalid_output", "missing")

# -- requests frame (build_requests) -------------------------------------------------------------
# The columns every request has: together they are the batch input line.
REQUEST_COLUMNS = ("custom_id", "method", "url", "body")
# retry_failed()'s frames: the batches their requests replace, which submit() never hands back.
RETRY_OF = "retry_of"
# The requests' columns the package writes; every other column is the user's, copied to results.
NON_DATA_COLUMNS = (*REQUEST_COLUMNS, RETRY_OF)

# -- manifest frame (to_jsonl): one row per JSONL shard ------------------------------------------
MANIFEST_COLUMNS = (
    "shard",
    "path",
    "n_requests",
    "n_bytes",
    "sha256",
    "est_input_tokens",
    "max_output_tokens",
    "first_custom_id",
    "last_custom_id",
    "model",
    "endpoint",
    RETRY_OF,  # retry_failed()'s batches the requests replace, for submit(); None otherwise
)
# The manifest columns submit() needs: a frame without one of them is not a manifest.
MANIFEST_REQUIRED = (
    "shard",
    "path",
    "n_requests",
    "sha256",
    "est_input_tokens",
    "model",
    "endpoint",
)

# -- jobs frame (submit / poll / resume / jobs): one row per shard -------------------------------
JOBS_COLUMNS = (
    "run_id",
    "shard",
    "batch_id",
    "status",
    "input_file_id",
    "output_file_id",
    "error_file_id",
    "sha256",
    "n_requests",
    "completed",
    "failed",
    "est_cost_usd",
    "created_at",
    "model",
    "endpoint",
    "path",
    "backend",
)
# The jobs columns a jobs table shows, in its order.
JOBS_TABLE_COLUMNS = (
    "run_id",
    "shard",
    "batch_id",
    "status",
    "completed",
    "failed",
    "n_requests",
    "est_cost_usd",
    "model",
    "backend",
    "created_at",
)

# -- costs frame (estimate_cost): one row per request --------------------------------------------
COST_COLUMNS = (
    "custom_id",
    "model",
    "input_tokens",
    "output_tokens_est",
    "batch_cost_usd",
    "sync_cost_usd",
)


# -- results frame (aggregate_df / run_sync): one row per requested custom_id --------------------
class ResultRow(NamedTuple):
    """What one output or error line gives (``_decode.row_of``); its fields but ``answer`` are
    results columns of the same name, in the results frame's order."""

    status: str  # one of RESULT_STATUSES
    http_status: int | None
    error_code: str | None
    error_message: str | None
    finish_reason: str | None
    content: str | None  # the answer text as the model wrote it
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None  # part of prompt_tokens
    cache_write_tokens: int | None  # part of prompt_tokens (GPT-5.6+), billed at 1.25x input
    reasoning_tokens: int | None  # part of completion_tokens: billed as output, never on top
    model: str | None  # what answered: the response's model, or local:<engine>
    answer: Any  # the decoded answer (the schema's fields), or the validator's empty value


# ResultRow's columns: all its fields but the decoded answer.
ROW_COLUMNS: tuple[str, ...] = ResultRow._fields[:-1]
# What happened to the request: the results columns right after the input columns.
ANSWER_COLUMNS = ROW_COLUMNS[: ROW_COLUMNS.index("prompt_tokens")]
# The usage counts of a row, as OpenAI reports them.
TOKEN_COLUMNS = ROW_COLUMNS[len(ANSWER_COLUMNS) : ROW_COLUMNS.index("model")]
# The results columns after the answer's fields.
USAGE_COLUMNS = (*TOKEN_COLUMNS, "cost_usd", "batch_id", "model", "requested_model")
# The results frame is: custom_id, the input columns, ANSWER_COLUMNS, the schema's fields,
# USAGE_COLUMNS, and merge_results' attempt. An input column or a schema field with one of these
# names would collide with them, so build_requests refuses it.
RESULT_COLUMNS = (*ANSWER_COLUMNS, *USAGE_COLUMNS, "attempt")


# -- colours -------------------------------------------------------------------------------------
# Status (batch, job or results row) -> hex colour, for badges, progress bars, charts and the CLI.
# Terminal states each have their own; finalizing is not completed's green: its counts are final
# but its output file is not ready.
STATUS_COLORS = {
    "queued": "#9e9e9e",
    "validating": "#607d8b",
    "in_progress": "#1e88e5",
    "finalizing": "#8e24aa",
    "cancelling": "#f57c00",
    "completed": "#2e7d32",
    "failed": "#c62828",
    "expired": "#ef6c00",
    "cancelled": "#6d4c41",
    "succeeded": "#2e7d32",
    "invalid_output": "#8e24aa",
    "missing": "#9e9e9e",
}
# A status the table does not know (a server's new one).
OTHER_STATUS_COLOR = "#757575"
# Risk level (lower-cased) -> hex colour; the levels' synonyms share their colour.
LEVEL_COLORS = {
    "low": "#2e7d32",
    "medium": "#f9a825",
    "moderate": "#f9a825",
    "elevated": "#ef6c00",
    "high": "#c62828",
    "critical": "#6a1b9a",
    "very high": "#6a1b9a",
}
# A level the table does not know.
OTHER_LEVEL_COLOR = "#1e88e5"
# A position without a usable score.
UNSCORED_COLOR = "#bdbdbd"
