"""Write a realistic OpenAI batch output file, its error file and the matching custom_ids.

    python bench/make_output.py                 # 50,000 output lines (~78 MB) in bench/data/
    python bench/make_output.py --lines 200000  # 4x

Lines look like real ``/v1/chat/completions`` batch results: ``batch_req_`` / ``req_`` /
``chatcmpl-`` ids, full usage blocks, a structured risk answer (JSON inside the JSON) with a
rationale of realistic length, written out of request order. About 1 % of the answers are cut at
``max_tokens`` (``finish_reason: "length"``, broken JSON); the error file holds 2 % more requests
(429, 500, 400 ``context_length_exceeded``, ``batch_expired``).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
SYMBOLS = [
    "AAPL",
    "MSFT",
    "NVDA",
    "AMZN",
    "GOOGL",
    "META",
    "TSLA",
    "BRK.B",
    "JPM",
    "V",
    "UNH",
    "XOM",
    "JNJ",
    "PG",
    "MA",
    "HD",
    "CVX",
    "MRK",
    "ABBV",
    "PEP",
    "KO",
    "AVGO",
    "COST",
    "LLY",
    "WMT",
    "BAC",
]
SECTORS = ["Technology", "Financials", "Health Care", "Energy", "Consumer Staples", "Industrials"]
DRIVERS = [
    "high position weight",
    "elevated beta",
    "high volatility",
    "sector concentration",
    "regulatory scrutiny",
    "valuation risk",
    "earnings sensitivity to rates",
    "supply chain exposure",
    "currency exposure",
    "commodity price swings",
]
PHRASES = [
    "The position carries a weight of {w:.1%} of the portfolio",
    "its beta of {b:.2f} amplifies broad market moves",
    "annualised volatility near {v:.0%} implies wide drawdowns in a stress scenario",
    "the {s} sector adds concentration with other holdings",
    "recent guidance suggests earnings are sensitive to the rate path",
    "a sharp de-rating would hit the portfolio more than its weight alone suggests",
    "liquidity is deep, so exits are not a concern even in volatile sessions",
    "dispersion within the sector has been rising over the last two quarters",
    "hedging with index futures would offset part of the market exposure",
    "position sizing should be reviewed if volatility stays above its long-run average",
    "a drawdown of this name would likely coincide with weakness in correlated holdings",
    "options markets price a wider range of outcomes than the trailing volatility shows",
]
MODEL = "gpt-4o-mini"
PROMPT_VERSION = "3f9a1c2e"


def custom_ids(n: int) -> list[str]:
    """Readable, unique ids in the style of build_requests: risk-<key>-<prompt hash>."""
    return [
        f"risk-{SYMBOLS[i % len(SYMBOLS)]}{i // len(SYMBOLS):05d}-{PROMPT_VERSION}"
        for i in range(n)
    ]


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _answer(rng: random.Random, key: str) -> tuple[dict[str, object], str]:
    w, b, v = rng.uniform(0.002, 0.08), rng.uniform(0.5, 1.9), rng.uniform(0.15, 0.65)
    score = min(100, int(20 + w * 400 + (b - 1) * 25 + v * 40))
    level = "low" if score < 34 else "medium" if score <= 66 else "high"
    phrases = rng.sample(PHRASES, k=9)
    rationale = "; ".join(p.format(w=w, b=b, v=v, s=rng.choice(SECTORS)) for p in phrases) + "."
    answer = {
        "position_key": key,  # RISK_SCHEMA's echo of the request's key, checked by aggregate_df
        "risk_score": score,
        "risk_level": level,
        "drivers": rng.sample(DRIVERS, k=3),
        "rationale": rationale,
    }
    return answer, orjson.dumps(answer).decode()


def _usage(rng: random.Random, completion: int) -> dict[str, object]:
    prompt = rng.randint(280, 360)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": rng.choice((0, 0, 0, 256)), "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def output_line(rng: random.Random, cid: str, *, cut: bool = False) -> dict[str, object]:
    _, content = _answer(rng, cid.split("-")[1])
    finish = "stop"
    if cut:  # stopped at max_tokens mid-JSON
        content, finish = content[: rng.randint(40, len(content) - 10)], "length"
    body = {
        "id": f"chatcmpl-{_hex(rng, 29)}",
        "object": "chat.completion",
        "created": 1_731_000_000 + rng.randint(0, 80_000),
        "model": "gpt-4o-mini-2024-07-18",
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
        "usage": _usage(rng, max(20, len(content) // 4)),
        "service_tier": "default",
        "system_fingerprint": "fp_0ba0d124f1",
    }
    return {
        "id": f"batch_req_{_hex(rng, 32)}",
        "custom_id": cid,
        "response": {"status_code": 200, "request_id": f"req_{_hex(rng, 32)}", "body": body},
        "error": None,
    }


def error_line(rng: random.Random, cid: str) -> dict[str, object]:
    kind = rng.random()
    line: dict[str, object] = {"id": f"batch_req_{_hex(rng, 32)}", "custom_id": cid}
    if kind < 0.25:
        line["response"] = None
        line["error"] = {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        }
        return line
    status, code, typ, msg = (
        (429, "rate_limit_exceeded", "requests", "Rate limit reached for gpt-4o-mini.")
        if kind < 0.55
        else (
            500,
            "server_error",
            "server_error",
            "The server had an error while processing your request.",
        )
        if kind < 0.8
        else (
            400,
            "context_length_exceeded",
            "invalid_request_error",
            "This model's maximum context length is 128000 tokens.",
        )
    )
    line["response"] = {
        "status_code": status,
        "request_id": f"req_{_hex(rng, 32)}",
        "body": {"error": {"message": msg, "type": typ, "param": None, "code": code}},
    }
    line["error"] = None
    return line


def make(out_dir: Path, lines: int = 50_000, *, seed: int = 7) -> dict[str, Path]:
    """Write output.jsonl (``lines`` lines), errors.jsonl and custom_ids.txt under ``out_dir``."""
    rng = random.Random(seed)
    n_errors = lines // 50
    ids = custom_ids(lines + n_errors)
    order = list(range(len(ids)))
    rng.shuffle(order)  # results come back in another order than requested
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        k: out_dir / f"{k}-{lines}.{ext}"
        for k, ext in (("output", "jsonl"), ("errors", "jsonl"), ("custom_ids", "txt"))
    }
    with open(paths["output"], "wb") as out, open(paths["errors"], "wb") as err:
        for j in order:
            cid = ids[j]
            if j % 51 == 50:
                err.write(orjson.dumps(error_line(rng, cid)) + b"\n")
            else:
                out.write(orjson.dumps(output_line(rng, cid, cut=rng.random() < 0.01)) + b"\n")
    paths["custom_ids"].write_text("\n".join(ids) + "\n")
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lines", type=int, default=50_000)
    ap.add_argument("--out", type=Path, default=HERE / "data")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    paths = make(args.out, args.lines, seed=args.seed)
    for kind, path in paths.items():
        print(f"{kind:<11} {path}  {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
