"""CREDIT and SDPO as verl advantage estimators, driven through verl's own ``compute_advantage``."""

from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo import core_algos, ray_trainer
from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

import credit_plugin
from credit_plugin.estimators import compute_credit_advantage, compute_sdpo_advantage

# verl's compute_advantage body that credit_plugin/patches/compute_advantage_batch_inputs.py mirrors for declared
# inputs.
UPSTREAM_COMPUTE_ADVANTAGE_SHA256 = "314695381c755264971a8f25865625bad4cf46c35d91901ba2a8f5e1ea980a18"


def _batch(contrast_k: int = 2) -> DataProto:
    gen = torch.Generator().manual_seed(0)
    bs, length = 6, 5
    response_mask = torch.ones(bs, length)
    response_mask[1, 3:] = 0
    response_mask[4, 1:] = 0
    scores = torch.zeros(bs, length)
    scores[torch.arange(bs), response_mask.sum(-1).long() - 1] = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    tensors = {
        "token_level_rewards": scores,
        "response_mask": response_mask,
        "old_log_probs": -torch.rand(bs, length, generator=gen) * 3,
        "teacher_log_probs": -torch.rand(bs, length, generator=gen) * 3,
        "contrast_log_probs": -torch.rand(bs, contrast_k, length, generator=gen) * 3,
        "self_distillation_mask": torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0]),
    }
    uids = np.array(["p0", "p0", "p1", "p1", "p2", "p2"], dtype=object)
    return DataProto.from_dict(tensors=tensors, non_tensors={"uid": uids})


def _algorithm(**credit) -> OmegaConf:
    return OmegaConf.create({"adv_estimator": "credit", "gamma": 1.0, "lam": 1.0, "credit": credit})


def _by_hand(data: DataProto, coef: float, form: str = "reward") -> torch.Tensor:
    b = data.batch
    baseline = b["contrast_log_probs"].mean(dim=1)
    subtracted = baseline if form == "logprob" else baseline - b["old_log_probs"]
    if form == "bounded":
        subtracted = torch.maximum(subtracted, (b["teacher_log_probs"] - b["old_log_probs"]).clamp(max=0))
    reward = b["teacher_log_probs"] - b["old_log_probs"] - coef * subtracted
    return reward * b["response_mask"] * b["self_distillation_mask"][:, None]


def test_estimators_resolve_after_import():
    assert core_algos.get_adv_estimator_fn("credit") is compute_credit_advantage
    assert core_algos.get_adv_estimator_fn("sdpo") is compute_sdpo_advantage
    credit_plugin.assert_registered()


@pytest.mark.parametrize("form", ["reward", "logprob", "bounded"])
@pytest.mark.parametrize("coef", [1.0, 0.3, 0.0])
def test_verl_compute_advantage_gives_credit_rewards(coef, form):
    config = _algorithm(contrast_coef=coef, contrast_form=form)
    data = ray_trainer.compute_advantage(_batch(), adv_estimator="credit", config=config)
    torch.testing.assert_close(data.batch["advantages"], _by_hand(data, coef, form), rtol=0, atol=1e-6)
    torch.testing.assert_close(data.batch["returns"], data.batch["advantages"])
    assert torch.all(data.batch["advantages"][2] == 0), "no teacher context -> no distillation signal"


def test_v1_trainer_path_and_positional_config():
    data = _batch()
    keys = [f"{uid}_0_{i}" for i, uid in enumerate(data.non_tensor_batch["uid"])]
    out = compute_advantage_for_multi_trajectories(data, keys, "credit", config=_algorithm(contrast_coef=0.5))
    torch.testing.assert_close(out.batch["advantages"], _by_hand(out, 0.5), rtol=0, atol=1e-6)
    positional = ray_trainer.compute_advantage(_batch(), "sdpo", 1.0, 1.0, 1, True, _algorithm(contrast_coef=0.5))
    torch.testing.assert_close(positional.batch["advantages"], _by_hand(positional, 0.0), rtol=0, atol=1e-6)


def test_logmeanexp_and_outcome_mix():
    config = _algorithm(contrast_coef=1.0, negative_aggregate="logmeanexp", outcome_mix=0.25, contrast_form="logprob")
    data = ray_trainer.compute_advantage(_batch(), adv_estimator="credit", config=config)
    b = data.batch
    distill = b["teacher_log_probs"] - b["contrast_log_probs"].exp().mean(1).log() - b["old_log_probs"]
    distill = distill * b["response_mask"] * b["self_distillation_mask"][:, None]
    grpo, _ = core_algos.compute_grpo_outcome_advantage(
        b["token_level_rewards"], b["response_mask"], data.non_tensor_batch["uid"]
    )
    torch.testing.assert_close(b["advantages"], 0.25 * grpo + 0.75 * distill, rtol=0, atol=1e-5)


def test_builtin_estimators_are_untouched():
    data = _batch()
    expected, _ = core_algos.compute_rloo_outcome_advantage(
        data.batch["token_level_rewards"], data.batch["response_mask"], data.non_tensor_batch["uid"]
    )
    out = ray_trainer.compute_advantage(data, adv_estimator="rloo", config=_algorithm())
    torch.testing.assert_close(out.batch["advantages"], expected)


def test_missing_teacher_fields_is_a_clear_error():
    data = _batch()
    data.batch.pop("teacher_log_probs")
    with pytest.raises(ValueError, match=r"needs the teacher pass's batch fields \['teacher_log_probs'\]"):
        ray_trainer.compute_advantage(data, adv_estimator="credit", config=_algorithm())
    data = _batch()
    data.batch.pop("contrast_log_probs")
    with pytest.raises(ValueError, match="contrast_log_probs"):
        ray_trainer.compute_advantage(data, adv_estimator="credit", config=_algorithm())
    sdpo = ray_trainer.compute_advantage(data, adv_estimator="sdpo", config=_algorithm())
    torch.testing.assert_close(sdpo.batch["advantages"], _by_hand(_batch(), 0.0), rtol=0, atol=1e-6)


def test_misspelt_credit_option_fails_in_the_estimator():
    with pytest.raises(ValueError, match="did you mean credit.num_negatives"):
        ray_trainer.compute_advantage(_batch(), adv_estimator="credit", config=_algorithm(num_negative=2))


def test_upstream_compute_advantage_is_the_one_the_patch_was_written_for():
    source = inspect.getsource(ray_trainer.compute_advantage.__wrapped__)
    assert hashlib.sha256(source.encode()).hexdigest() == UPSTREAM_COMPUTE_ADVANTAGE_SHA256, (
        "verl's compute_advantage changed: re-read credit_plugin/patches/compute_advantage_batch_inputs.py against it"
    )


def _fresh_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # fresh processes importing verl (about 60 s)
def test_stock_verl_loads_the_plugin_through_its_entry_point():
    code = (
        "import verl\n"
        "from verl.trainer.ppo import core_algos, ray_trainer\n"
        "import sys\n"
        "assert 'credit_plugin' in sys.modules\n"
        "print(sorted(k for k in core_algos.ADV_ESTIMATOR_REGISTRY if k in ('credit', 'sdpo')))\n"
        "print(ray_trainer.compute_advantage.credit_patch)\n"
    )
    result = _fresh_python(code, VERL_USE_EXTERNAL_PLUGINS="auto")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["['credit',", "'sdpo']", "compute_advantage_batch_inputs"]
    disabled = _fresh_python(code, VERL_USE_EXTERNAL_PLUGINS="none")
    assert disabled.returncode != 0
    loud = _fresh_python(code, VERL_USE_EXTERNAL_PLUGINS="none", VERL_USE_EXTERNAL_MODULES="credit_plugin")
    assert loud.returncode == 0, loud.stderr[-2000:]


def _with_kl_penalty(data: DataProto, coef: float) -> DataProto:
    """verl's own ``apply_kl_penalty`` (``algorithm.use_kl_in_reward``) over the batch, with a fixed beta."""
    gen = torch.Generator().manual_seed(1)
    data.batch["token_level_scores"] = data.batch["token_level_rewards"].clone()
    data.batch["ref_log_prob"] = -torch.rand(data.batch["old_log_probs"].shape, generator=gen) * 3
    data, _ = ray_trainer.apply_kl_penalty(data, core_algos.FixedKLController(coef), kl_penalty="kl")
    return data


@pytest.mark.parametrize("estimator", ["credit", "sdpo"])
def test_kl_in_reward_reaches_the_advantages_as_the_per_token_penalty(estimator):
    plain = ray_trainer.compute_advantage(_batch(), adv_estimator=estimator, config=_algorithm())
    data = ray_trainer.compute_advantage(_with_kl_penalty(_batch(), 0.2), adv_estimator=estimator, config=_algorithm())
    b = data.batch
    penalty = -0.2 * (b["old_log_probs"] - b["ref_log_prob"]) * b["response_mask"]
    context = b["response_mask"] * b["self_distillation_mask"][:, None]
    assert penalty.abs().sum() > 0
    torch.testing.assert_close(b["advantages"] - plain.batch["advantages"], penalty * context, rtol=0, atol=1e-6)


def test_kl_in_reward_with_an_outcome_mix_enters_both_terms():
    config = _algorithm(outcome_mix=0.25, contrast_coef=0.5)
    data = ray_trainer.compute_advantage(_with_kl_penalty(_batch(), 0.2), adv_estimator="credit", config=config)
    b = data.batch
    context = b["response_mask"] * b["self_distillation_mask"][:, None]
    penalty = (b["token_level_rewards"] - b["token_level_scores"]) * context
    grpo, _ = core_algos.compute_grpo_outcome_advantage(
        b["token_level_rewards"], b["response_mask"], data.non_tensor_batch["uid"]
    )
    expected = 0.25 * grpo + 0.75 * (_by_hand(data, 0.5) + penalty)
    torch.testing.assert_close(b["advantages"], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("norm", [True, False])
def test_outcome_mix_follows_verls_norm_adv_by_std_in_grpo(norm):
    data = _batch()
    keys = [f"{uid}_0_{i}" for i, uid in enumerate(data.non_tensor_batch["uid"])]
    config = _algorithm(outcome_mix=1.0)
    out = compute_advantage_for_multi_trajectories(data, keys, "credit", norm_adv_by_std_in_grpo=norm, config=config)
    b = out.batch
    grpo, _ = core_algos.compute_grpo_outcome_advantage(
        b["token_level_rewards"], b["response_mask"], out.non_tensor_batch["uid"], norm_adv_by_std_in_grpo=norm
    )
    torch.testing.assert_close(b["advantages"], grpo, rtol=0, atol=1e-6)


def test_the_plugin_has_no_copy_of_verls_norm_adv_option():
    with pytest.raises(ValueError, match="set algorithm.norm_adv_by_std_in_grpo instead"):
        ray_trainer.compute_advantage(
            _batch(), adv_estimator="credit", config=_algorithm(norm_adv_by_std_in_grpo=False)
        )
