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
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER
from verl.utils.reward_score import default_compute_score

from credit_plugin import scorers

NAME = "credit"


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


class CreditRewardManager(RewardManagerBase):
    """Scores one trajectory per ``run_single``; the blocking scorer (a code sandbox) runs in the executor."""

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
        if self.uses_credit_scorers:
            self.compute_score = scorers.compute_score
            self.score_options = _reward_kwargs(config)
            scorers.check_options(self.score_options, where="reward.reward_kwargs")
        else:
            self.score_options = {}
        self.is_async_reward_score = inspect.iscoroutinefunction(self.compute_score)
        self.reward_router_address = reward_router_address
        self.reward_model_tokenizer = reward_model_tokenizer

    def _score_kwargs(self) -> dict:
        if self.uses_credit_scorers:
            return dict(self.score_options)
        if self.reward_router_address is None:
            return {}
        return {
            "reward_router_address": self.reward_router_address,
            "reward_model_tokenizer": self.reward_model_tokenizer,
        }

    async def run_single(self, data: DataProto) -> dict:
        """Score the last sequence of ``data`` (one trajectory, as verl's reward loop passes it).

        Returns:
            ``{"reward_score": float, "reward_extra_info": {"score", "acc", "feedback", ...}}``.
        """
        item = data[len(data) - 1]
        fields = item.non_tensor_batch
        missing = [key for key in ("data_source", "reward_model") if key not in fields]
        if missing:
            raise KeyError(
                f"credit reward manager: the sample has no {missing} (present: {sorted(fields)}); it needs the "
                "dataset fields, which verl's colocated reward-model path does not pass"
            )
        response_ids = item.batch["responses"]
        valid_length = int(item.batch["attention_mask"][-response_ids.shape[-1] :].sum())
        loop = asyncio.get_running_loop()
        response_str = await loop.run_in_executor(
            None, functools.partial(self.tokenizer.decode, response_ids[:valid_length], skip_special_tokens=True)
        )

        # A copy: the dataset's dict travels on to the trainer's store.
        extra_info = dict(fields.get("extra_info") or {})
        extra_info.update(fields.get("tool_extra_fields") or {})
        extra_info["num_turns"] = fields.get("__num_turns__")
        call = functools.partial(
            self.compute_score,
            data_source=fields["data_source"],
            solution_str=response_str,
            ground_truth=fields["reward_model"]["ground_truth"],
            extra_info=extra_info,
            **self._score_kwargs(),
        )
        result = await call() if self.is_async_reward_score else await loop.run_in_executor(None, call)

        if isinstance(result, Mapping):
            if "score" not in result:
                raise KeyError(f"the reward function returned a dict without 'score': keys {sorted(result)}")
            reward_extra_info = dict(result)
            score = float(result["score"])
        else:
            score = float(result)
            reward_extra_info = {"acc": score}  # verl's naive manager does the same for a bare score
        feedback = reward_extra_info.get("feedback")
        reward_extra_info["feedback"] = "" if feedback is None else str(feedback)
        return {"reward_score": score, "reward_extra_info": reward_extra_info}


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
