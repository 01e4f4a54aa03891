"""The public signatures keep the house style: the data argument(s) positional, every option
keyword-only (``summarize(results, costs)`` is a TypeError, not a silent guess), and real types
rather than ``Any`` (a user's type checker and IDE see what each parameter takes)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import openai
import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch import charts, local, review, testing

# The parameters each public function takes by position: its data, nothing else. A new public
# function must be added here, which is the moment to decide what its data is.
POSITIONAL: dict[str, tuple[str, ...]] = {
    "aggregate_df": ("jobs", "requests"),
    "attach": ("run_id",),
    "build_requests": ("df",),
    "cancel": ("jobs",),
    "check_answers": ("results",),
    "check_budget": ("estimate_usd_or_costs",),
    "client": (),
    "compare": ("previous", "current"),
    "compare_models": ("requests",),
    "dashboard": ("results",),
    "estimate_cost": ("requests",),
    "iter_jsonl": ("path",),
    "jobs": (),
    "load_portfolio": ("path_or_df",),
    "merge_results": ("old", "new"),
    "poll": ("jobs",),
    "report": ("results",),
    "resume": ("run_or_batch_ids",),
    "retry_failed": ("results", "requests"),
    "run_sync": ("requests",),
    "runs": (),
    "start": ("requests_or_manifest",),
    "submit": ("manifest_or_requests",),
    "summarize": ("results",),
    # where the shards go is the destination, as in DataFrame.to_csv(path)
    "to_jsonl": ("requests", "out_dir"),
}
# Public classes: their constructor's positional parameters (methods take none but self).
CLASSES: dict[str, tuple[str, ...]] = {"Run": ("plan",)}
# Public classes of portfolio_batch.local / .testing with positional constructor parameters.
LOCAL_CLASSES: dict[str, tuple[str, ...]] = {"BatchAPI": ("server", "client")}
# Their methods that take data by position (every other method takes keywords only).
METHODS: dict[str, tuple[str, ...]] = {
    "BatchAPI.advance_clock": ("seconds",),
    "BatchAPI.wait": ("batch_id",),
    "ServerConfig.chance": ("rate",),
    "ServerConfig.faults_apply": ("route",),
}
# **kwargs passed through to another library's constructor, which types them.
FORWARDED_KWARGS = {"client": "overrides"}  # openai.OpenAI / AzureOpenAI(**overrides)

_POSITIONAL_KINDS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _public_functions() -> dict[str, Callable[..., object]]:
    return {n: getattr(pb, n) for n in pb.__all__ if inspect.isfunction(getattr(pb, n))}


def _public_classes() -> dict[str, type]:
    return {
        n: obj
        for n in pb.__all__
        if inspect.isclass(obj := getattr(pb, n)) and not issubclass(obj, BaseException)
    }


def _methods(cls: type) -> dict[str, Callable[..., object]]:
    return {
        name: fn
        for name, fn in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(fn)
    }


def _positional(fn: Callable[..., object], *, skip_self: bool = False) -> tuple[str, ...]:
    names = [
        p.name for p in inspect.signature(fn).parameters.values() if p.kind in _POSITIONAL_KINDS
    ]
    return tuple(names[1:] if skip_self else names)


def _hints(fn: Callable[..., object]) -> dict[str, Any]:
    # Names some modules import only for type checking (slow to import, or from an extra).
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from pydantic import BaseModel

    from portfolio_batch._summary import Summary
    from portfolio_batch._widgets import RunView

    extra = {
        "Axes": Axes,
        "BaseModel": BaseModel,
        "Figure": Figure,
        "RunView": RunView,
        "Summary": Summary,
        "openai": openai,
    }
    globalns = getattr(fn, "__globals__", {})
    return typing.get_type_hints(fn, globalns=globalns, localns={**extra, **globalns})


def _any_annotations(name: str, fn: Callable[..., object]) -> list[str]:
    params = inspect.signature(fn).parameters
    bad = []
    for param, hint in _hints(fn).items():
        if hint is not Any:
            continue
        kind = params[param].kind if param in params else None
        if kind is inspect.Parameter.VAR_KEYWORD and FORWARDED_KWARGS.get(name) == param:
            continue
        bad.append(f"{name}({param}: Any)" if param != "return" else f"{name}() -> Any")
    return bad


def test_every_public_function_has_its_positional_parameters_declared() -> None:
    assert sorted(_public_functions()) == sorted(POSITIONAL)
    assert sorted(_public_classes()) == sorted(CLASSES)


def test_options_are_keyword_only_after_the_data_arguments() -> None:
    wrong = {
        name: got
        for name, fn in _public_functions().items()
        if (got := _positional(fn)) != POSITIONAL[name]
    }
    for cls_name, cls in _public_classes().items():
        init = _positional(cls.__init__, skip_self=True)  # type: ignore[misc]
        if init != CLASSES[cls_name]:
            wrong[f"{cls_name}()"] = init
        for meth, fn in _methods(cls).items():
            if got := _positional(fn, skip_self=True):
                wrong[f"{cls_name}.{meth}"] = got
    for module in (charts, review):
        for name in module.__all__:
            fn = getattr(module, name)
            if inspect.isfunction(fn) and len(got := _positional(fn)) != 1:
                wrong[f"{module.__name__}.{name}"] = got
    # the local server and the test double: settings only, all by keyword
    for module, name in [(local, n) for n in local.__all__] + [
        (testing, n) for n in testing.__all__
    ]:
        obj = getattr(module, name)
        if inspect.isfunction(obj) and (got := _positional(obj)):
            wrong[f"{module.__name__}.{name}"] = got
        if inspect.isclass(obj):
            init = _positional(obj.__init__, skip_self=True)  # type: ignore[misc]
            # a BatchAPI is made by local_batch_api from what it started
            if init != LOCAL_CLASSES.get(name, ()):
                wrong[f"{module.__name__}.{name}()"] = init
            for meth, fn in _methods(obj).items():
                if (got := _positional(fn, skip_self=True)) != METHODS.get(f"{name}.{meth}", ()):
                    wrong[f"{module.__name__}.{name}.{meth}"] = got
    assert not wrong, f"positional options (make them keyword-only after '*'): {wrong}"


def test_no_public_signature_says_any() -> None:
    bad = []
    for name, fn in _public_functions().items():
        bad += _any_annotations(name, fn)
    for cls_name, cls in _public_classes().items():
        bad += _any_annotations(f"{cls_name}.__init__", cls.__init__)  # type: ignore[misc]
        for meth, fn in _methods(cls).items():
            bad += _any_annotations(f"{cls_name}.{meth}", fn)
    for module in (charts, review):
        for name in module.__all__:
            fn = getattr(module, name)
            if inspect.isfunction(fn):
                bad += _any_annotations(f"{module.__name__}.{name}", fn)
    assert not bad, f"Any in public signatures: {bad}"


def test_the_client_parameters_take_an_openai_client() -> None:
    # AzureOpenAI subclasses OpenAI, so this covers both backends.
    for name in ("aggregate_df", "run_sync", "submit", "poll", "cancel", "resume", "start"):
        assert _hints(getattr(pb, name))["client"] == openai.OpenAI | None, name


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r, c: pb.summarize(r, c), "summarize"),
        (lambda r, c: pb.report(r, c, path="r.html"), "report"),
        (lambda r, c: pb.compare_models(r, ["gpt-4o-mini"]), "compare_models"),
        (lambda r, c: pb.check_budget(c, 1.0), "check_budget"),
        (lambda r, c: pb.jobs("run-1"), "jobs"),
        (lambda r, c: review.coverage(r, c), "coverage"),
    ],
)
def test_a_positional_option_is_a_type_error(
    call: Callable[[pd.DataFrame, pd.DataFrame], object], message: str
) -> None:
    frame = pd.DataFrame({"status": ["succeeded"], "error_code": [None]})
    with pytest.raises(TypeError, match="positional argument"):
        call(frame, frame)
