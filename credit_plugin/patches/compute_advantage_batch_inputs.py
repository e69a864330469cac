"""Let registered advantage estimators receive declared batch fields from verl's ``compute_advantage``.

Why a patch: verl 0.9.1's ``compute_advantage`` (``verl/trainer/ppo/ray_trainer.py``) forwards a fixed
set of keys (``token_level_rewards``, ``response_mask``, ``config``, ``index``, ``reward_baselines``) to a
registered estimator and offers no hook for more. CREDIT's estimator needs the teacher pass's fields.
With this patch an estimator that carries a ``batch_inputs`` tuple of batch keys receives those present in
``data.batch`` as keyword arguments, together with ``compute_advantage``'s own ``norm_adv_by_std_in_grpo``
(verl passes ``algorithm.norm_adv_by_std_in_grpo`` there; its GRPO branch reads it, a registered estimator
would not get it); every other estimator goes through verl's function untouched.

The wrapper is installed where the name is looked up at call time: ``ray_trainer.compute_advantage`` and
the copy imported by the V1 trainer's ``verl.trainer.ppo.v1.utils``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import verl
from verl.protocol import DataProto
from verl.trainer.ppo import core_algos, ray_trainer
from verl.trainer.ppo.v1 import utils as v1_utils

from credit_plugin.patches import require_verl

NAME = "compute_advantage_batch_inputs"


def _estimator_name(adv_estimator: Any) -> str:
    return adv_estimator.value if isinstance(adv_estimator, core_algos.AdvantageEstimator) else str(adv_estimator)


def _with_batch_inputs(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def compute_advantage(data: DataProto, adv_estimator: Any, *args: Any, **kwargs: Any):
        fn = core_algos.ADV_ESTIMATOR_REGISTRY.get(_estimator_name(adv_estimator))
        batch_inputs = getattr(fn, "batch_inputs", ())
        if not batch_inputs:
            return original(data, adv_estimator, *args, **kwargs)
        bound = signature.bind(data, adv_estimator, *args, **kwargs)
        bound.apply_defaults()
        if "response_mask" not in data.batch.keys():
            data.batch["response_mask"] = ray_trainer.compute_response_mask(data)
        inputs = {key: data.batch[key] for key in batch_inputs if key in data.batch.keys()}
        advantages, returns = fn(
            token_level_rewards=data.batch["token_level_rewards"],
            response_mask=data.batch["response_mask"],
            index=data.non_tensor_batch.get("uid"),
            config=bound.arguments["config"],
            norm_adv_by_std_in_grpo=bound.arguments["norm_adv_by_std_in_grpo"],
            **inputs,
        )
        data.batch["advantages"] = advantages
        data.batch["returns"] = returns
        return data

    compute_advantage.credit_patch = NAME
    return compute_advantage


def apply() -> None:
    """Install the wrapper once; raises on a verl version the patch was not written for."""
    require_verl(NAME, verl.__version__)
    if getattr(ray_trainer.compute_advantage, "credit_patch", None) == NAME:
        return
    patched = _with_batch_inputs(ray_trainer.compute_advantage)
    ray_trainer.compute_advantage = patched
    v1_utils.compute_advantage = patched
