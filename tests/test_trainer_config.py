"""The CREDIT trainer refuses configurations it cannot serve, naming the option, before any worker starts."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from verl.trainer.ppo.utils import Role

from credit_plugin.config import CONFIG_DIR, CreditConfig
from credit_plugin.trainer import CreditTrainer
from credit_plugin.workers import CreditActorRolloutRefWorker


def _config(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="credit_trainer", overrides=list(overrides))


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["algorithm.adv_estimator=grpo"], ValueError, "needs algorithm.adv_estimator in"),
        (["credit.teacher=trust_region"], NotImplementedError, "trust_region"),
        (["credit.granularity=logit"], NotImplementedError, "granularity=logit"),
        (["+credit.num_negativs=2"], ValueError, "did you mean credit.num_negatives"),
    ],
)
def test_unsupported_settings_fail_at_construction(overrides, error, message):
    with pytest.raises(error, match=message):
        CreditTrainer(_config(*overrides))


def _worker_mapping(*overrides: str) -> CreditTrainer:
    trainer = CreditTrainer.__new__(CreditTrainer)
    trainer.config = _config(*overrides)
    trainer.credit = CreditConfig.from_dict(trainer.config.credit)
    trainer._init_resource_pool_mgr()
    return trainer


@pytest.mark.parametrize(("teacher", "role"), [("ema", Role.ActorRolloutRef), ("frozen", Role.ActorRolloutRef)])
def test_ref_teachers_get_a_ref_engine_in_the_ema_capable_worker(teacher, role):
    trainer = _worker_mapping(f"credit.teacher={teacher}")
    assert list(trainer.role_worker_mapping) == [role]
    assert trainer.mapping[role] == "global_pool"
    assert trainer.role_worker_mapping[role].__ray_actor_class__ is CreditActorRolloutRefWorker


def test_current_teacher_needs_no_ref_engine():
    trainer = _worker_mapping("credit.teacher=current")
    assert list(trainer.role_worker_mapping) == [Role.ActorRollout]


def test_lora_with_a_ref_teacher_is_a_clear_error():
    with pytest.raises(ValueError, match="credit.teacher=ema with LoRA"):
        _worker_mapping("credit.teacher=ema", "actor_rollout_ref.model.lora_rank=8")
