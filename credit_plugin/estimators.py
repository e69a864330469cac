"""CREDIT and SDPO as verl advantage estimators (``algorithm.adv_estimator: credit | sdpo``).

Contract: how teacher scores reach a registered estimator
----------------------------------------------------------
verl's ``compute_advantage`` hands a registered estimator only ``token_level_rewards``, ``response_mask``,
``index`` (uid) and ``config``. These estimators also need the teacher pass's outputs, which the CREDIT
trainer (``credit_plugin.trainer``) writes into the batch under the names of :data:`TEACHER_BATCH_KEYS`:

- ``teacher_log_probs``: (bs, response_length), ``log pi_ref(y_t | reprompt(x_i, z_i), y_<t)``;
- ``contrast_log_probs``: (bs, K, response_length), the same with the prompts of K other groups
  (absent when ``contrast_coef == 0``);
- ``student_contrast_log_probs``: (bs, K, response_length), ``log pi_theta(y_t | x'_k, y_<t)`` under the same
  K prompts without feedback (only for ``contrast_form: pmi``);
- ``old_log_probs``: (bs, response_length), ``log pi_theta(y_t | x_i, y_<t)`` (verl's own field);
- ``self_distillation_mask``: (bs,), 0 for samples without teacher context.

They also read ``token_level_scores`` (verl's field, the outcome reward before ``apply_kl_penalty``): with
``algorithm.use_kl_in_reward`` verl writes ``token_level_rewards = token_level_scores - beta * kl``, and the
per-token penalty ``token_level_rewards - token_level_scores`` is added to the distillation advantage,
which is itself a per-token reward. ``norm_adv_by_std_in_grpo`` is verl's ``algorithm`` option, which
``compute_advantage`` receives and the patch forwards.

Each estimator declares these keys in its ``batch_inputs`` attribute, and the version-checked patch
``credit_plugin.patches.compute_advantage_batch_inputs`` makes verl's ``compute_advantage`` forward the
declared keys present in ``data.batch`` as keyword arguments. Called without them, the estimators raise.
The options come from ``config.credit`` (the trainer merges the top-level ``credit:`` section into the
algorithm config), or from a :class:`~credit_plugin.config.CreditConfig` passed as ``config``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from verl.trainer.ppo import core_algos

from credit_plugin.config import CreditConfig
from credit_plugin.rewards import credit_token_rewards, mix_outcome_advantages

TEACHER_BATCH_KEYS = (
    "teacher_log_probs",
    "contrast_log_probs",
    "student_contrast_log_probs",
    "old_log_probs",
    "self_distillation_mask",
)
# verl's own batch fields the estimators read on top of those of verl's estimator signature.
VERL_BATCH_KEYS = ("token_level_scores",)
# The names registered below (``algorithm.adv_estimator``); the trainer and the registration check read them here.
CREDIT = "credit"
SDPO = "sdpo"
ESTIMATORS = (CREDIT, SDPO)


def resolve_credit_config(config: Any) -> CreditConfig:
    """The CREDIT options from an algorithm config holding a ``credit`` section, or a CreditConfig itself."""
    if isinstance(config, CreditConfig):
        return config
    section = config.get("credit") if isinstance(config, Mapping) or hasattr(config, "get") else None
    if isinstance(section, CreditConfig):
        return section
    return CreditConfig.from_dict(section)


def _distillation_advantages(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None,
    credit: CreditConfig,
    teacher_log_probs: torch.Tensor | None,
    contrast_log_probs: torch.Tensor | None,
    old_log_probs: torch.Tensor | None,
    self_distillation_mask: torch.Tensor | None,
    estimator: str,
    student_contrast_log_probs: torch.Tensor | None = None,
    token_level_scores: torch.Tensor | None = None,
    norm_adv_by_std_in_grpo: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    missing = [
        name
        for name, value in (("teacher_log_probs", teacher_log_probs), ("old_log_probs", old_log_probs))
        if value is None
    ]
    if contrast_log_probs is None and not credit.is_sdpo:
        missing.append("contrast_log_probs")
    if student_contrast_log_probs is None and credit.contrast_form == "pmi" and not credit.is_sdpo:
        missing.append("student_contrast_log_probs")
    if missing:
        raise ValueError(
            f"adv_estimator={estimator!r} needs the teacher pass's batch fields {missing}; run it with the CREDIT "
            f"trainer (trainer.v1.trainer_mode=credit) or put them in data.batch before compute_advantage"
        )
    mask = response_mask.to(teacher_log_probs.dtype)
    if self_distillation_mask is not None:
        if self_distillation_mask.shape != response_mask.shape[:1]:
            raise ValueError(
                f"self_distillation_mask has shape {tuple(self_distillation_mask.shape)}, "
                f"expected ({response_mask.shape[0]},)"
            )
        mask = mask * self_distillation_mask.to(mask.dtype).unsqueeze(-1)
    advantages = credit_token_rewards(
        teacher_log_probs=teacher_log_probs,
        contrast_log_probs=contrast_log_probs,
        student_log_probs=old_log_probs,
        response_mask=mask,
        contrast_coef=credit.contrast_coef,
        aggregate=credit.negative_aggregate,
        form=credit.contrast_form,
        student_contrast_log_probs=student_contrast_log_probs,
        centering=credit.contrast_centering,
    )
    if token_level_scores is not None:
        # use_kl_in_reward: the KL penalty verl put into token_level_rewards, token by token
        penalty = token_level_rewards - token_level_scores
        advantages = advantages + torch.where(mask.bool(), penalty, torch.zeros_like(penalty)).to(advantages.dtype)
    if credit.outcome_mix > 0:
        if index is None:
            raise ValueError(f"credit.outcome_mix > 0 needs the batch's uid (index) for {estimator!r}")
        grpo = core_algos.get_adv_estimator_fn("grpo_vectorized")
        outcome, _ = grpo(
            token_level_rewards=token_level_rewards,
            response_mask=response_mask,
            index=index,
            norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
        )
        advantages = mix_outcome_advantages(outcome, advantages, credit.outcome_mix)
    return advantages, advantages


def _declare_batch_inputs(fn: Callable) -> Callable:
    fn.batch_inputs = TEACHER_BATCH_KEYS + VERL_BATCH_KEYS
    return fn


@core_algos.register_adv_est(CREDIT)
@_declare_batch_inputs
def compute_credit_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    teacher_log_probs: torch.Tensor | None = None,
    contrast_log_probs: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    self_distillation_mask: torch.Tensor | None = None,
    student_contrast_log_probs: torch.Tensor | None = None,
    token_level_scores: torch.Tensor | None = None,
    norm_adv_by_std_in_grpo: bool = True,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CREDIT token advantages: the SDPO reward minus lambda times the contrast term of ``credit.contrast_form``.

    Args:
        token_level_rewards: `(torch.Tensor)` shape (bs, response_length); the outcome reward, used only
            when ``credit.outcome_mix > 0``.
        response_mask: `(torch.Tensor)` shape (bs, response_length).
        index: `(np.ndarray)` shape (bs,), the uid of each sample.
        config: algorithm config with a ``credit`` section, or a CreditConfig.
        teacher_log_probs: shape (bs, response_length).
        contrast_log_probs: shape (bs, K, response_length).
        old_log_probs: shape (bs, response_length).
        self_distillation_mask: shape (bs,).
        student_contrast_log_probs: shape (bs, K, response_length); ``contrast_form: pmi`` only.
        token_level_scores: shape (bs, response_length), the outcome reward before verl's KL penalty; when
            given, ``token_level_rewards - token_level_scores`` (the penalty) is added where the sample has a
            teacher context.
        norm_adv_by_std_in_grpo: verl's ``algorithm.norm_adv_by_std_in_grpo``, for the ``outcome_mix`` term.

    Returns:
        advantages, returns: both shape (bs, response_length), zero outside ``response_mask`` and on rows
        whose ``self_distillation_mask`` is 0 (unless ``outcome_mix`` adds the GRPO term there).
    """
    return _distillation_advantages(
        token_level_rewards,
        response_mask,
        index,
        resolve_credit_config(config),
        teacher_log_probs,
        contrast_log_probs,
        old_log_probs,
        self_distillation_mask,
        CREDIT,
        student_contrast_log_probs,
        token_level_scores,
        norm_adv_by_std_in_grpo,
    )


@core_algos.register_adv_est(SDPO)
@_declare_batch_inputs
def compute_sdpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    teacher_log_probs: torch.Tensor | None = None,
    contrast_log_probs: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    self_distillation_mask: torch.Tensor | None = None,
    token_level_scores: torch.Tensor | None = None,
    norm_adv_by_std_in_grpo: bool = True,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPO token advantages ``log pi_ref(y_t|x,z) - log pi_theta(y_t|x)``: CREDIT with ``contrast_coef = 0``.

    Same arguments and returns as :func:`compute_credit_advantage`; ``contrast_log_probs`` is ignored.
    """
    credit = dataclasses.replace(resolve_credit_config(config), contrast_coef=0.0)
    return _distillation_advantages(
        token_level_rewards,
        response_mask,
        index,
        credit,
        teacher_log_probs,
        None,
        old_log_probs,
        self_distillation_mask,
        SDPO,
        None,
        token_level_scores,
        norm_adv_by_std_in_grpo,
    )
