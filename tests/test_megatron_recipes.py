"""The Megatron recipes (recipes/megatron) compose over verl's config with ``model_engine=megatron`` and pass
verl's own validation (``validate_config``, as ``main_ppo`` runs it), its engine config schema, and the CREDIT
trainer's Megatron checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config

from credit_plugin.config import CreditConfig
from credit_plugin.trainer import CreditTrainer, check_ema_ref_dtype

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "megatron"
# recipe -> (tensor-parallel size, GPUs, attention heads and KV heads of its model, which TP must divide)
EXPECTED = {"credit_8b_tp2": (2, 8, 32, 8), "credit_32b_tp8": (8, 16, 64, 8)}


def _compose(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        return compose(config_name=name, overrides=list(overrides))


def test_every_recipe_is_checked():
    assert {path.stem for path in RECIPES.glob("credit_*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_composes_over_verls_megatron_config_and_validates(name):
    tp, gpus, heads, kv_heads = EXPECTED[name]
    config = _compose(name, "data.train_files=train.parquet", "data.val_files=val.parquet")
    OmegaConf.resolve(config)
    actor, ref = config.actor_rollout_ref.actor, config.actor_rollout_ref.ref
    assert config.model_engine == "megatron" and actor.strategy == ref.strategy == "megatron"
    assert config.trainer.v1.trainer_mode == "credit" and config.algorithm.adv_estimator == "credit"
    assert actor.megatron.tensor_model_parallel_size == tp and heads % tp == 0 and kv_heads % tp == 0
    assert config.trainer.nnodes * config.trainer.n_gpus_per_node == gpus

    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    # The ref engine (the ema/frozen teacher) inherits the actor's layout, shard for shard.
    assert ref.megatron.tensor_model_parallel_size == tp and ref.megatron.forward_only
    data_parallel = gpus // (tp * actor.megatron.pipeline_model_parallel_size * actor.megatron.context_parallel_size)
    assert data_parallel * tp * actor.megatron.pipeline_model_parallel_size == gpus

    trainer = CreditTrainer.__new__(CreditTrainer)
    trainer.credit = CreditConfig.from_dict(config.credit)
    trainer._check_megatron(config.actor_rollout_ref)
    # the bf16 ref serves the ema teacher (the worker keeps the EMA state in fp32): not refused at start-up
    assert trainer.credit.teacher == "ema" and ref.megatron.dtype == "bfloat16"
    check_ema_ref_dtype(config.actor_rollout_ref)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_with_a_ref_layout_other_than_the_actors_is_refused_for_ema(name):
    config = _compose(name, "actor_rollout_ref.ref.megatron.tensor_model_parallel_size=1")
    trainer = CreditTrainer.__new__(CreditTrainer)
    trainer.credit = CreditConfig.from_dict(config.credit)
    assert trainer.credit.teacher == "ema"
    with pytest.raises(ValueError, match="tensor_model_parallel_size"):
        trainer._check_megatron(config.actor_rollout_ref)
