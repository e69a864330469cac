"""verl reward-loop manager ``credit``: the outcome score plus textual feedback for CREDIT's teacher.

Select it with ``reward.reward_manager.name=credit`` (``source: register``, verl's default; ``import
credit_plugin`` registers it), or, without relying on the plugin import::

    reward.reward_manager.source=importlib
    reward.reward_manager.module.path=pkg://credit_plugin.reward_manager
    reward.reward_manager.name=CreditRewardManager

(``pkg://`` is needed: verl takes a bare dotted name for a file path; the class name goes in ``name``,
not ``module.name``; the path of this file works too.)

Scores come from :func:`credit_plugin.scorers.compute_score` with the options in
``reward.reward_kwargs`` (e.g. ``+reward.reward_kwargs.max_feedback_chars=4000``), unless a
``reward.custom_reward_function`` is configured: then that function is called, as by verl's ``naive``
manager, and ``feedback`` is ``""`` unless it returns one.

Where the feedback goes (verl 0.9.1): ``run_single`` returns ``reward_extra_info = {"score", "acc",
"feedback"}`` (plus any other keys a custom function returns).

- Streaming path (no reward model, the default; with a reward model on its own pool only together with a
  ``custom_reward_function``):
  ``AgentLoopWorker._compute_score`` sets the trajectory's ``extra_fields["reward_extra_info"]``; the
  v1 trainer's TransferQueue stores each sample's ``extra_fields``, so the feedback is
  ``extra_fields["reward_extra_info"]["feedback"]`` (the legacy non-TransferQueue agent loop instead
  makes every key a ``non_tensor_batch`` column).
- Colocated reward-model path (``reward_model.enable`` without its own pool): ``RewardLoopManager.compute_rm_score``
  writes each ``reward_extra_info`` key as a top-level field (``feedback``, ``acc``). But the worker
  calls a reward manager there only with a ``custom_reward_function`` (else it queries the reward model
  and returns no extra info), and the v1 trainer sends that path only prompts, responses and
  ``raw_prompt``, without ``data_source`` or ground truth, so this manager raises a clear error there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import math
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER
from verl.utils.reward_score import default_compute_score

from credit_plugin import scorers
from credit_plugin.scorers.sandbox import SandboxUnavailableError

logger = logging.getLogger(__name__)

NAME = "credit"
# Where a sample's feedback travels (module docstring): verl's key for what run_single returns besides the score,
# and the key of the feedback in it. The trainer reads the feedback back through :func:`feedback_of`.
EXTRA_INFO_KEY = "reward_extra_info"
FEEDBACK_KEY = "feedback"
# The store fields :func:`feedback_of` reads: verl's per-sample ``extra_fields``, or a top-level feedback field.
EXTRA_FIELDS = "extra_fields"
FEEDBACK_FIELDS = (EXTRA_FIELDS, FEEDBACK_KEY)
MANAGER_OPTIONS = {"max_parallel": 8, "score_timeout_s": 120.0}
FAILURE_KEYS = ("reward_error", "reward_timeout")
# Why a sample could not be scored ("" when it was): kept out of ``feedback``, which only the scorer writes.
REASON_KEY = "reward_error_reason"


def _is_verl_default(compute_score: Any) -> bool:
    """Whether verl passed its own default scorer (it does when no custom function is configured)."""
    while isinstance(compute_score, functools.partial):
        compute_score = compute_score.func
    return compute_score is default_compute_score


def _reward_kwargs(config: Any) -> dict:
    reward = config.get("reward") if isinstance(config, (DictConfig, Mapping)) else getattr(config, "reward", None)
    options = reward.get("reward_kwargs") if reward is not None else None
    if options is None:
        return {}
    return OmegaConf.to_container(options, resolve=True) if isinstance(options, DictConfig) else dict(options)


def _manager_options(options: dict) -> dict:
    """Take the manager's own options out of ``options`` (in place), checked, with defaults."""
    taken = {key: options.pop(key, default) for key, default in MANAGER_OPTIONS.items()}
    max_parallel, timeout = taken["max_parallel"], taken["score_timeout_s"]
    if not isinstance(max_parallel, int) or isinstance(max_parallel, bool) or max_parallel < 1:
        raise ValueError(f"reward.reward_kwargs.max_parallel must be a positive int, got {max_parallel!r}")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"reward.reward_kwargs.score_timeout_s must be a positive number, got {timeout!r}")
    return taken


def _dataset_files(config: Any) -> list[str]:
    data = config.get("data") if isinstance(config, (DictConfig, Mapping)) else None
    files = []
    for key in ("train_files", "val_files"):
        value = data.get(key) if data is not None else None
        if isinstance(value, str):
            files.append(value)
        elif value is not None:
            files.extend(str(item) for item in value)
    return files


def dataset_data_sources(config: Any) -> set[str] | None:
    """The ``data_source`` values of the configured parquet files that can be read; None if none can.

    Files that cannot be read here (another format, a path only the trainer resolves) are skipped: their
    samples are checked when scored.
    """
    import pyarrow.parquet as pq

    sources, readable = set(), False
    for path in _dataset_files(config):
        try:
            column = pq.read_table(path, columns=["data_source"]).column("data_source")
        except (OSError, KeyError, ValueError) as exc:
            logger.info("credit reward manager: data sources of %s not checked at start-up (%s)", path, exc)
            continue
        readable = True
        sources.update(str(value) for value in column.unique().to_pylist())
    return sources if readable else None


def feedback_of(fields: Any, size: int) -> list[str | None]:
    """Per-sample feedback of a batch of ``size`` samples (verl's v1 store, a TensorDict or a mapping of fields).

    ``extra_fields["reward_extra_info"]["feedback"]`` on the streaming reward path, a top-level ``feedback``
    field on the colocated reward-model path; None where a sample has none.
    """
    if FEEDBACK_KEY in fields.keys():
        return [None if text is None else str(text) for text in list(fields[FEEDBACK_KEY])]
    feedback: list[str | None] = [None] * size
    if EXTRA_FIELDS in fields.keys():
        for index, extra in enumerate(list(fields[EXTRA_FIELDS])):
            info = (extra or {}).get(EXTRA_INFO_KEY) or {}
            text = info.get(FEEDBACK_KEY)
            feedback[index] = None if text is None else str(text)
    return feedback


def reward_failed_of(fields: Any, size: int) -> list[bool]:
    """Per sample of a batch of ``size`` (as :func:`feedback_of` reads it): whether its scoring failed.

    Such a sample gets no teacher context (its ``self_distillation_mask`` is 0): its score is the reward
    path's failure, not a verdict on the response, so neither a feedback line nor a sibling's
    demonstration says anything about what it did wrong.
    """
    if "reward_error" in fields.keys():
        return [bool(value) for value in list(fields["reward_error"])]
    failed = [False] * size
    if EXTRA_FIELDS in fields.keys():
        for index, extra in enumerate(list(fields[EXTRA_FIELDS])):
            info = (extra or {}).get(EXTRA_INFO_KEY) or {}
            failed[index] = bool(info.get("reward_error") or 0.0)
    return failed


def reward_failure_metrics(extra_fields: Iterable[Any]) -> dict[str, float]:
    """``credit/reward/errors`` and ``credit/reward/timeouts``: failed samples of a step.

    Args:
        extra_fields: per-sample ``extra_fields`` dicts (verl's v1 trainer store), each holding
            ``reward_extra_info`` as this manager returned it.
    """
    errors = timeouts = 0.0
    for extra in extra_fields:
        info = extra.get(EXTRA_INFO_KEY) if isinstance(extra, Mapping) else None
        if isinstance(info, Mapping):
            errors += float(info.get("reward_error") or 0.0)
            timeouts += float(info.get("reward_timeout") or 0.0)
    return {"credit/reward/errors": errors, "credit/reward/timeouts": timeouts}


def _release_when_done(slots: asyncio.Semaphore) -> Callable[[asyncio.Future], None]:
    def release(future: asyncio.Future) -> None:
        slots.release()
        if not future.cancelled():
            future.exception()  # retrieved: a call that ended after its time-out logs no "never retrieved"

    return release


class _SampleError(Exception):
    """A sample that cannot be scored (its fields, its scorer's failure); it gets score 0, the step goes on."""


class CreditRewardManager(RewardManagerBase):
    """Scores one trajectory per ``run_single``; the blocking scorer (a code sandbox) runs in a bounded pool."""

    def __init__(
        self,
        config: Any,
        tokenizer: Any,
        compute_score: Callable[..., Any] | None = None,
        reward_router_address: str | None = None,
        reward_model_tokenizer: Any = None,
    ) -> None:
        super().__init__(config, tokenizer, compute_score)
        self.uses_credit_scorers = compute_score is None or _is_verl_default(compute_score)
        options = _reward_kwargs(config)
        manager_options = _manager_options(options)
        self.max_parallel = manager_options["max_parallel"]
        self.score_timeout_s = float(manager_options["score_timeout_s"])
        if self.uses_credit_scorers:
            self.compute_score = scorers.compute_score
            self.score_options = options
            scorers.check_options(self.score_options, where="reward.reward_kwargs")
            data_sources = dataset_data_sources(config)
            scorers.check_option_values(self.score_options, data_sources=data_sources)
            scorers.check_score_timeout(self.score_timeout_s, self.score_options, data_sources)
        else:
            self.score_options = {}
        self.is_async_reward_score = inspect.iscoroutinefunction(self.compute_score)
        self.reward_router_address = reward_router_address
        self.reward_model_tokenizer = reward_model_tokenizer
        self._pool = concurrent.futures.ThreadPoolExecutor(self.max_parallel, thread_name_prefix="credit-reward")
        # One semaphore per event loop (an asyncio primitive binds to the loop that first waits on it).
        self._slots: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _score_kwargs(self) -> dict:
        if self.uses_credit_scorers:
            return dict(self.score_options)
        if self.reward_router_address is None:
            return {}
        return {
            "reward_router_address": self.reward_router_address,
            "reward_model_tokenizer": self.reward_model_tokenizer,
        }

    @staticmethod
    def _sample_fields(fields: Mapping) -> tuple[Any, Any, dict]:
        """``(data_source, ground_truth, extra_info)`` of a sample; _SampleError naming what is missing."""
        missing = [key for key in ("data_source", "reward_model") if fields.get(key) is None]
        if missing:
            raise _SampleError(
                f"the sample has no {missing} (present: {sorted(fields)}); it needs the dataset fields, "
                "which verl's colocated reward-model path does not pass"
            )
        reward_model = fields["reward_model"]
        if not isinstance(reward_model, Mapping) or "ground_truth" not in reward_model:
            raise _SampleError(f"the sample's reward_model is not a dict with 'ground_truth': {type(reward_model)}")
        # A copy: the dataset's dict travels on to the trainer's store. Non-dict values carry nothing usable.
        extra = fields.get("extra_info")
        extra_info = dict(extra) if isinstance(extra, Mapping) else {}
        tool_fields = fields.get("tool_extra_fields")
        extra_info.update(tool_fields if isinstance(tool_fields, Mapping) else {})
        extra_info["num_turns"] = fields.get("__num_turns__")
        return fields["data_source"], reward_model["ground_truth"], extra_info

    async def _call(self, call: Callable[[], Any]) -> Any:
        """Run one scorer call, at most ``max_parallel`` at once; ``score_timeout_s`` counts from its start.

        A call's slot is held until its thread ends, also past a time-out (a thread cannot be stopped): so
        a call never waits in the pool's queue behind a timed-out one while its own time runs, and every
        call that gets a slot starts at once on a free thread.
        """
        loop = asyncio.get_running_loop()
        slots = self._slots.setdefault(loop, asyncio.Semaphore(self.max_parallel))
        if self.is_async_reward_score:
            async with slots:
                return await asyncio.wait_for(call(), self.score_timeout_s)
        await slots.acquire()
        started = loop.create_future()

        def run() -> Any:
            loop.call_soon_threadsafe(lambda: started.done() or started.set_result(None))
            return call()

        try:
            future = loop.run_in_executor(self._pool, run)
        except BaseException:
            slots.release()
            raise
        future.add_done_callback(_release_when_done(slots))
        await started
        # shield: a time-out must not cancel the future (that would run the callback and free the slot early).
        return await asyncio.wait_for(asyncio.shield(future), self.score_timeout_s)

    @staticmethod
    def _failed(reason: str, *, timeout: bool) -> dict:
        # No feedback: the reason is about the reward path, not the response, and must not reach the teacher.
        info = {
            "score": 0.0,
            "acc": False,
            FEEDBACK_KEY: "",
            "reward_error": 1.0,
            "reward_timeout": float(timeout),
            REASON_KEY: reason,
        }
        return {"reward_score": 0.0, EXTRA_INFO_KEY: info}

    async def run_single(self, data: DataProto) -> dict:
        """Score the last sequence of ``data`` (one trajectory, as verl's reward loop passes it).

        Returns:
            ``{"reward_score": float, "reward_extra_info": {"score", "acc", "feedback", "reward_error",
            "reward_timeout", "reward_error_reason", ...}}``; a sample that fails scores 0 with empty
            feedback and the reason in ``reward_error_reason`` (and gets no teacher context).
        """
        item = data[len(data) - 1]
        try:
            data_source, ground_truth, extra_info = self._sample_fields(item.non_tensor_batch)
            response_ids = item.batch["responses"]
            valid_length = int(item.batch["attention_mask"][-response_ids.shape[-1] :].sum())
            response_str = await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(self.tokenizer.decode, response_ids[:valid_length], skip_special_tokens=True)
            )
            call = functools.partial(
                self.compute_score,
                data_source=data_source,
                solution_str=response_str,
                ground_truth=ground_truth,
                extra_info=extra_info,
                **self._score_kwargs(),
            )
            result = await self._call(call)
            score, reward_extra_info = self._result(result)
        except SandboxUnavailableError:
            raise  # a configuration error: no sample can be scored
        except asyncio.TimeoutError:
            logger.warning("credit reward manager: scoring took longer than %s s; score 0", self.score_timeout_s)
            feedback = f"Scoring this response took longer than {self.score_timeout_s:g} s, so it gets reward 0."
            return self._failed(feedback, timeout=True)
        except Exception as exc:
            # The message may quote the ground truth: it goes to the log, not into the teacher's feedback.
            logger.warning("credit reward manager: a sample could not be scored: %s: %.2000s", type(exc).__name__, exc)
            reason = str(exc) if isinstance(exc, _SampleError) else f"{type(exc).__name__} in the scorer"
            return self._failed(f"This response could not be scored ({reason}), so it gets reward 0.", timeout=False)
        return {"reward_score": score, EXTRA_INFO_KEY: reward_extra_info}

    @staticmethod
    def _result(result: Any) -> tuple[float, dict]:
        if isinstance(result, Mapping):
            if "score" not in result:
                raise _SampleError(f"the reward function returned a dict without 'score': keys {sorted(result)}")
            reward_extra_info = dict(result)
            score = float(result["score"])
        else:
            score = float(result)
            reward_extra_info = {"acc": score}  # verl's naive manager does the same for a bare score
        if not math.isfinite(score):
            raise _SampleError(f"the reward function returned a non-finite score {score}")
        feedback = reward_extra_info.get(FEEDBACK_KEY)
        reward_extra_info[FEEDBACK_KEY] = "" if feedback is None else str(feedback)
        reward_extra_info.update({key: 0.0 for key in FAILURE_KEYS})
        reward_extra_info[REASON_KEY] = ""
        return score, reward_extra_info


def _register() -> None:
    """Register under ``credit``; loading this file again by path (verl's importlib source) is not an error."""
    existing = REWARD_MANAGER.get(NAME)
    if existing is None:
        register(NAME)(CreditRewardManager)
    elif existing.__qualname__ != CreditRewardManager.__qualname__:
        raise ValueError(
            f"reward manager {NAME!r} is already registered by {existing.__module__}.{existing.__qualname__}"
        )


_register()
