"""Task scorers that return a reward *and* textual feedback for the teacher, and their dispatcher.

Pure Python (no verl import), usable as verl's ``custom_reward_function`` as well as through the
``credit`` reward manager. :func:`compute_score` picks the scorer from ``data_source`` by prefix
(case-insensitive, first match wins):

- ``livecodebench``, ``lcb``, ``code``: :func:`~credit_plugin.scorers.code.score_code`
- ``sciknoweval``, ``science``: :func:`~credit_plugin.scorers.science.score_science`
- ``toolalpaca``, ``tool``: :func:`~credit_plugin.scorers.tool_use.score_tool_use`

So ``"livecodebench_v6"``, ``"sciknoweval/chemistry"`` and ``"tooluse"`` all resolve. The development demo
task (``credit_tiny``) is not in this table: its recipe scores it through verl's ``custom_reward_function``
(:func:`credit_plugin.dev.tiny.task.compute_score`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from credit_plugin.scorers.code import check_code_options, score_code
from credit_plugin.scorers.result import ScoreResult, check_max_feedback_chars
from credit_plugin.scorers.sandbox import START_SLACK_S, SandboxLimits, worst_case_seconds
from credit_plugin.scorers.science import score_science
from credit_plugin.scorers.tool_use import score_tool_use

DATA_SOURCE_PREFIXES: tuple[tuple[str, Callable[..., ScoreResult]], ...] = (
    ("livecodebench", score_code),
    ("lcb", score_code),
    ("code", score_code),
    ("sciknoweval", score_science),
    ("science", score_science),
    ("toolalpaca", score_tool_use),
    ("tool", score_tool_use),
)
# verl passes these to every reward function when a reward model is enabled; rule-based scorers need neither.
VERL_REWARD_MODEL_KWARGS = ("reward_router_address", "reward_model_tokenizer")


def _options(scorer: Callable[..., ScoreResult]) -> frozenset[str]:
    params = inspect.signature(scorer).parameters.values()
    return frozenset(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


SCORER_OPTIONS: dict[Callable[..., ScoreResult], frozenset[str]] = {
    scorer: _options(scorer) for _, scorer in DATA_SOURCE_PREFIXES
}
ALL_OPTIONS = frozenset().union(*SCORER_OPTIONS.values())


def scorer_for(data_source: str) -> Callable[..., ScoreResult]:
    """The scorer for ``data_source`` (prefix table in the module docstring); ValueError if none."""
    key = str(data_source).lower()
    for prefix, scorer in DATA_SOURCE_PREFIXES:
        if key.startswith(prefix):
            return scorer
    known = ", ".join(prefix for prefix, _ in DATA_SOURCE_PREFIXES)
    raise ValueError(f"no CREDIT scorer for data_source {data_source!r}; known prefixes: {known}")


def check_options(options: Mapping[str, Any], where: str = "scorer options") -> None:
    """Raise ValueError naming any option that no scorer accepts (so a typo does not pass silently)."""
    unknown = sorted(set(options) - ALL_OPTIONS - set(VERL_REWARD_MODEL_KWARGS))
    if unknown:
        raise ValueError(f"unknown {where} {unknown}; known: {sorted(ALL_OPTIONS)}")


_CODE_CHECKED = ("score_mode", "max_failures", "total_timeout_s", "float_tolerance", "sandbox", "sandbox_fusion_url")
_LIMITS = ("timeout_s", "memory_limit_mb", "max_output_bytes", "max_processes")


def check_option_values(options: Mapping[str, Any], data_sources: set[str] | None = None) -> None:
    """Check option values and data sources before any sample is scored (start-up), so they fail loudly.

    Args:
        options: scorer options, as for :func:`compute_score`.
        data_sources: the dataset's ``data_source`` values, if known: each must have a scorer
            (ValueError), and if one is scored as code, the chosen sandbox must run here
            (:class:`~credit_plugin.scorers.sandbox.SandboxUnavailableError`). With None, the sandbox
            is checked when the first code sample is scored.
    """
    if "max_feedback_chars" in options:
        check_max_feedback_chars(options["max_feedback_chars"])
    SandboxLimits(**{key: options[key] for key in _LIMITS if key in options})
    used = None if data_sources is None else {scorer_for(source) for source in sorted(data_sources)}
    code_options = {key: options[key] for key in _CODE_CHECKED if key in options}
    check_code_options(**code_options, probe=used is not None and score_code in used)


def check_score_timeout(
    score_timeout_s: float, options: Mapping[str, Any], data_sources: set[str] | None = None
) -> None:
    """ValueError unless ``score_timeout_s`` exceeds the code sandbox's own longest run (retries included).

    Checked where code may be scored (``data_sources`` None or holding a code source): a shorter limit
    abandons calls that the backend would still finish or time out itself, and each abandoned call keeps
    its thread (and its ``max_parallel`` slot) until it ends.
    """
    if data_sources is not None and score_code not in {scorer_for(source) for source in data_sources}:
        return
    defaults = inspect.signature(score_code).parameters
    backend = options.get("sandbox", defaults["sandbox"].default)
    total = options.get("total_timeout_s", defaults["total_timeout_s"].default)
    bound = worst_case_seconds(backend, float(total))
    if not score_timeout_s > bound:
        raise ValueError(
            f"reward.reward_kwargs.score_timeout_s={score_timeout_s:g} must exceed {bound:g} s, the longest a "
            f"code sample can take with sandbox={backend} and total_timeout_s={total:g} (the runner's budget plus "
            f"{START_SLACK_S:g} s to start{', times verl client retries' if backend == 'sandbox_fusion' else ''});"
            " raise score_timeout_s or lower total_timeout_s"
        )


def compute_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None, **kwargs: Any
) -> dict:
    """Score one response with the scorer for its ``data_source``.

    Args:
        kwargs: scorer options (e.g. ``max_feedback_chars``, ``timeout_s``, ``reveal_answer``); each scorer
            gets the ones it accepts, so one set of options can serve a mixed dataset.

    Returns:
        ``{"score": float, "acc": bool, "feedback": str}``; ``feedback`` is ``""`` for a fully correct response.
    """
    check_options(kwargs)
    scorer = scorer_for(data_source)
    accepted = {key: value for key, value in kwargs.items() if key in SCORER_OPTIONS[scorer]}
    return scorer(solution_str, ground_truth, extra_info, **accepted).as_dict()


__all__ = [
    "DATA_SOURCE_PREFIXES",
    "ScoreResult",
    "check_option_values",
    "check_score_timeout",
    "check_options",
    "compute_score",
    "scorer_for",
]
