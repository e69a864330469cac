"""With LoRA, verl keeps no second model: the frozen model is the actor with its adapter disabled.

A trained (non-zero) PEFT adapter is loaded into verl's ``actor_rollout`` worker on CPU; the ``frozen`` and
``trust_region`` teachers must then score with the base weights and the base/adapted logit mix, checked
against plain transformers + peft forwards."""

from __future__ import annotations

import peft
import pytest
import ray
import torch
from conftest import label_log_probs, load_model, response_logits
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import response_from_nested

from credit_plugin.dev.cpu.workers import (
    build_log_prob_batch,
    compose_cpu_config,
    create_worker_groups,
    ray_init_kwargs,
)
from credit_plugin.workers import CreditActorRolloutRefWorker

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TAU = 0.4
RANK = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model_dir):
    """(base model dir, adapter dir, base model, adapted model): the adapter's B matrices are random, so the
    adapted model differs from the base (a fresh adapter would be the identity)."""
    config = peft.LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules="all-linear", task_type="CAUSAL_LM")
    adapted = peft.get_peft_model(load_model(tiny_model_dir), config)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    adapter_dir = tmp_path_factory.mktemp("lora_adapter")
    adapted.save_pretrained(adapter_dir)
    return tiny_model_dir, adapter_dir, load_model(tiny_model_dir), adapted.eval()


@pytest.fixture(scope="module")
def actor(models):
    """verl's hybrid ``actor_rollout`` worker with the adapter loaded (verl's ``ref_in_actor`` layout)."""
    base_dir, adapter_dir, *_ = models
    config = compose_cpu_config(
        str(base_dir),
        config_name="credit_trainer",
        overrides=[
            "actor_rollout_ref.rollout.name=hf_cpu",
            "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
            "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
            "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=256",
            f"actor_rollout_ref.model.lora_rank={RANK}",
            f"actor_rollout_ref.model.lora_alpha={2 * RANK}",
            "actor_rollout_ref.model.target_modules=all-linear",
            f"actor_rollout_ref.model.lora_adapter_path={adapter_dir}",
        ],
    )
    ray.init(**ray_init_kwargs(1))
    try:
        groups = create_worker_groups(config, roles=("actor_rollout",), worker_cls=CreditActorRolloutRefWorker)
        yield groups["actor_rollout"]
    finally:
        ray.shutdown()


def _batch(tokenizer):
    prompts = [tokenizer.encode("Reverse the word 'cat'."), tokenizer.encode("What is 2 + 3?")]
    responses = [tokenizer.encode(" Answer: tac"), tokenizer.encode(" It is 5, since 2 + 3 = 5.")]
    return prompts, responses, build_log_prob_batch(prompts, responses)


def _expected(model, prompts, responses, other=None, coef: float = 0.0) -> list[torch.Tensor]:
    """Label log-probs of ``model``, or of the logit mix ``lerp(z_model, z_other, coef)``."""
    rows = []
    for prompt, response in zip(prompts, responses, strict=True):
        logits = response_logits(model, prompt, response)
        if other is not None:
            logits = torch.lerp(logits, response_logits(other, prompt, response), coef)
        rows.append(label_log_probs(logits, response))
    return rows


def _rows(output, batch) -> list[torch.Tensor]:
    return list(response_from_nested(output["log_probs"], batch["response_mask"]).double())


def _assert_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    for row, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g[: len(w)], w, rtol=0, atol=1e-4, msg=f"sample {row}")


def test_the_adapter_changes_the_actor(actor, models, tokenizer):
    _, _, base, adapted = models
    prompts, responses, batch = _batch(tokenizer)
    got = _rows(actor.compute_log_prob(batch), batch)
    _assert_close(got, _expected(adapted, prompts, responses))
    base_rows = _expected(base, prompts, responses)
    assert max((g[: len(w)] - w).abs().max() for g, w in zip(got, base_rows, strict=True)) > 1e-2


def test_frozen_teacher_is_the_actor_without_its_adapter(actor, models, tokenizer):
    _, _, base, _ = models
    prompts, responses, batch = _batch(tokenizer)
    tu.assign_non_tensor(batch, no_lora_adapter=True)
    _assert_close(_rows(actor.compute_log_prob(batch), batch), _expected(base, prompts, responses))


@pytest.mark.parametrize("remove_padding", [True, False], ids=["packed", "padded"])
def test_trust_region_teacher_mixes_base_and_adapted_logits(actor, models, tokenizer, remove_padding):
    """Both of verl's forward layouts (packed sequences, or a padded batch) give the mix at every position."""
    _, _, base, adapted = models
    prompts, responses, batch = _batch(tokenizer)
    tu.assign_non_tensor(batch, trust_region_coef=TAU, use_remove_padding=remove_padding)
    got = _rows(actor.compute_trust_region_log_prob(batch), batch)
    _assert_close(got, _expected(base, prompts, responses, other=adapted, coef=TAU))
    # The adapter is active again afterwards: the actor's own scores are unchanged.
    _, _, plain = _batch(tokenizer)
    _assert_close(_rows(actor.compute_log_prob(plain), plain), _expected(adapted, prompts, responses))
