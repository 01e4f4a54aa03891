"""Regenerate the golden batch files from testdata/portfolio.csv (run from the repository root):

    .venv/bin/python testdata/batch/make_golden.py

requests.jsonl is exactly what ``to_jsonl(build_requests(load_portfolio(...)))`` writes with the
defaults. output.jsonl / errors.jsonl are realistic OpenAI Batch results for those requests,
made deterministically (fixed seed): lines out of order; a 400 ``context_length_exceeded`` (TSLA),
a 500 ``server_error`` (INTC) and a ``batch_expired`` request (GE) in errors.jsonl; one answer cut
at max_tokens (AMD: finish_reason "length", content not valid JSON) in output.jsonl.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import orjson

import portfolio_batch as pb
from portfolio_batch._tokens import count_text_tokens

HERE = Path(__file__).resolve().parent
MODEL_SNAPSHOT = "gpt-4o-mini-2024-07-18"
CREATED = 1763990000  # 2025-11-24, fixed so the files never change


def _answer(row: dict) -> dict:
    vol, beta, weight = row.get("volatility", 0.25), row.get("beta", 1.0), row["weight"]
    score = round(min(100.0, 100 * (0.5 * vol / 0.6 + 0.3 * beta / 2.1 + 0.2 * weight / 0.07)))
    level = "low" if score < 34 else "medium" if score <= 66 else "high"
    drivers = []
    if vol >= 0.35:
        drivers.append(f"high volatility ({vol:.0%} annualised)")
    if beta >= 1.3:
        drivers.append(f"high market beta ({beta:.2f})")
    if weight >= 0.04:
        drivers.append(f"large position ({weight:.1%} of the portfolio)")
    if row.get("notes") and len(drivers) < 3:
        drivers.append(str(row["notes"]).split(";")[0].lower())
    drivers = drivers[:3] or [f"{row.get('sector', 'sector')} exposure"]
    rationale = (
        f"{row.get('name', row['ticker'])} combines a beta of {beta:.2f} with {vol:.0%} volatility "
        f"at a {weight:.1%} weight, so its contribution to portfolio risk is {level}."
    )
    return {
        "position_key": row["ticker"],  # the echo RISK_SCHEMA asks for first
        "risk_score": score,
        "risk_level": level,
        "drivers": drivers,
        "rationale": rationale,
    }


def main() -> None:
    rng = random.Random(20251124)

    def hexid(n: int) -> str:
        return "".join(rng.choice("0123456789abcdef") for _ in range(n))

    def alnum(n: int) -> str:
        return "".join(
            rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
            for _ in range(n)
        )

    portfolio = pb.load_portfolio(HERE.parent / "portfolio.csv")
    requests = pb.build_requests(portfolio)
    costs = pb.estimate_cost(requests)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = pb.to_jsonl(requests, tmp)
        shutil.copyfile(manifest.path.iloc[0], HERE / "requests.jsonl")

    outputs, errors = [], []
    for cid, row in requests.iterrows():
        fields = {
            k: v for k, v in row.drop(["custom_id", "method", "url", "body"]).items() if v == v
        }
        ticker = fields["ticker"]
        line_id = f"batch_req_{hexid(32)}"
        request_id = f"req_{hexid(32)}"
        prompt_tokens = int(costs.at[cid, "input_tokens"])
        if ticker == "GE":
            errors.append(
                {
                    "id": line_id,
                    "custom_id": cid,
                    "response": None,
                    "error": {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired.",
                    },
                }
            )
            continue
        if ticker in ("TSLA", "INTC"):
            if ticker == "TSLA":
                status, error = (
                    400,
                    {
                        "message": "This model's maximum context length is 128000 tokens. However, your messages "
                        "resulted in 131245 tokens (130845 in the messages, 400 in the completion). Please reduce "
                        "the length of the messages or completion.",
                        "type": "invalid_request_error",
                        "param": "messages",
                        "code": "context_length_exceeded",
                    },
                )
            else:
                status, error = (
                    500,
                    {
                        "message": "The server had an error while processing your request. Sorry about that! You can "
                        "retry your request, or contact us through our help center at help.openai.com if the error "
                        f"persists. (Please include the request ID {request_id} in your message.)",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    },
                )
            errors.append(
                {
                    "id": line_id,
                    "custom_id": cid,
                    "response": {
                        "status_code": status,
                        "request_id": request_id,
                        "body": {"error": error},
                    },
                    "error": None,
                }
            )
            continue
        content = orjson.dumps(_answer(fields)).decode()
        finish = "stop"
        completion_tokens = count_text_tokens(content, model="gpt-4o-mini") + 1
        if ticker == "AMD":  # the answer stopped at max_tokens: content is cut mid-JSON
            content = content[:57]
            finish = "length"
            completion_tokens = 400
        cached = 256 if ticker in ("AAPL", "JPM", "KO") else 0
        body = {
            "id": f"chatcmpl-{alnum(29)}",
            "object": "chat.completion",
            "created": CREATED + rng.randint(60, 3600),
            "model": MODEL_SNAPSHOT,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": content,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_560af6e559",
        }
        outputs.append(
            {
                "id": line_id,
                "custom_id": cid,
                "response": {"status_code": 200, "request_id": request_id, "body": body},
                "error": None,
            }
        )
    rng.shuffle(outputs)  # the Batch API does not keep input order
    rng.shuffle(errors)
    for name, lines in (("output.jsonl", outputs), ("errors.jsonl", errors)):
        (HERE / name).write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    print(
        f"requests.jsonl: {len(requests)} lines; output.jsonl: {len(outputs)}; errors.jsonl: {len(errors)}"
    )


if __name__ == "__main__":
    main()
