"""CREDIT's asynchronous trainer modes, built from verl's own trainer classes, without workers.

``credit_colocate_async`` runs end to end on CPU (tests/e2e/test_async_cpu.py); ``credit_separate_async`` needs a
GPU weight-transfer backend for its standalone rollout pool, so its pieces are checked here: verl's own trainer
(its start-up assertions, replay buffer and per-update batch size), the worker that must carry both verl's
weight save/restore methods and the plugin's teacher methods, the call order of the decoupled old log-prob pass
around CREDIT's, and every combination start-up refuses.
"""

from __future__ import annotations

import inspect

import pytest
from hydra import compose, initialize_config_dir
from verl.experimental.separation.engine_workers import DetachActorWorker
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1 import get_trainer_cls
from verl.trainer.ppo.v1.replay_buffer import ReplayBufferAsync
from verl.trainer.ppo.v1.trainer_base import PPOTrainer
from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync
from verl.trainer.ppo.v1.trainer_separate_async import PPOTrainerSeparateAsync

from credit_plugin.async_modes import COLOCATE_ASYNC, SEPARATE_ASYNC, prompt_groups_per_update
from credit_plugin.async_trainers import (
    CreditColocateAsyncTrainer,
    CreditDetachActorWorker,
    CreditSeparateAsyncTrainer,
)
from credit_plugin.config import CONFIG_DIR
from credit_plugin.trainer import CreditSteps, check_start_up
from credit_plugin.workers import CreditActorRolloutRefWorker

# what verl's separate_async asserts at construction: train_batch_size = parameter_sync_step x ppo_mini_batch_size,
# a standalone rollout pool, and a weight-transfer backend other than "naive"
SEPARATE = (
    f"trainer.v1.trainer_mode={SEPARATE_ASYNC}",
    "data.train_batch_size=8",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "trainer.v1.separate_async.parameter_sync_step=2",
    "actor_rollout_ref.rollout.nnodes=1",
    "actor_rollout_ref.rollout.n_gpus_per_node=1",
    "actor_rollout_ref.rollout.checkpoint_engine.backend=nccl",
)


def _config(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="credit_trainer", overrides=list(overrides))


@pytest.mark.parametrize(
    ("mode", "cls", "verl_cls"),
    [
        (COLOCATE_ASYNC, CreditColocateAsyncTrainer, PPOTrainerColocateAsync),
        (SEPARATE_ASYNC, CreditSeparateAsyncTrainer, PPOTrainerSeparateAsync),
    ],
)
def test_each_mode_is_credits_steps_over_verls_own_trainer_class(mode, cls, verl_cls):
    assert get_trainer_cls(mode) is cls
    assert cls.__mro__[1:3] == (CreditSteps, verl_cls), "CREDIT's overrides run first, then verl's class"
    # no verl body is copied: the async classes define no method, every hook verl's class has is verl's own
    assert not [name for name, value in vars(cls).items() if inspect.isfunction(value)]
    for hook in ("on_init_end", "on_train_begin", "on_step_end", "on_sample_end", "get_llm_client"):
        assert getattr(cls, hook) is getattr(verl_cls, hook)


def test_colocate_async_keeps_verls_async_semantics_and_the_users_mode_name():
    config = _config(f"trainer.v1.trainer_mode={COLOCATE_ASYNC}")
    trainer = CreditColocateAsyncTrainer(config)
    assert config.trainer.v1.trainer_mode == COLOCATE_ASYNC, "the logged and saved config shows the user's setting"
    assert trainer.trainer_mode == "colocate_async"
    assert type(trainer.replay_buffer) is ReplayBufferAsync, "partial rollouts across versions: verl's async buffer"
    assert trainer.parameter_sync_step == 1, "one update per step: the whole batch's groups give the negatives"


def test_separate_async_runs_verls_start_up_and_one_update_per_mini_batch():
    trainer = CreditSeparateAsyncTrainer(_config(*SEPARATE))
    assert trainer.trainer_mode == "separate_async"
    assert type(trainer.replay_buffer) is ReplayBufferAsync
    assert trainer.parameter_sync_step == 2
    assert prompt_groups_per_update(trainer.config, "separate_async") == 4


def test_separate_async_keeps_verls_own_assertion():
    with pytest.raises(AssertionError, match="train_batch_size must equal parameter_sync_step"):
        CreditSeparateAsyncTrainer(_config(*SEPARATE, "actor_rollout_ref.actor.ppo_mini_batch_size=2"))


@pytest.mark.parametrize("teacher", ["ema", "frozen", "trust_region"])
def test_separate_async_worker_has_verls_weight_restore_and_the_teacher_methods(teacher):
    trainer = CreditSeparateAsyncTrainer.__new__(CreditSeparateAsyncTrainer)
    trainer.config = _config(*SEPARATE, f"credit.teacher={teacher}")
    trainer.credit = check_start_up(trainer.config)
    trainer._init_resource_pool_mgr()
    assert list(trainer.role_worker_mapping) == [Role.ActorRolloutRef]
    worker = trainer.role_worker_mapping[Role.ActorRolloutRef].__ray_actor_class__
    assert worker is CreditDetachActorWorker
    assert issubclass(worker, DetachActorWorker) and issubclass(worker, CreditActorRolloutRefWorker)
    for method in ("save_model_to_cpu", "restore_model_from_cpu", "clear_cpu_model"):
        assert getattr(worker, method) is getattr(DetachActorWorker, method)
    for method in ("update_teacher_ema", "save_teacher", "load_teacher", "compute_trust_region_log_prob"):
        assert getattr(worker, method) is getattr(CreditActorRolloutRefWorker, method)


class _Workers:
    """Records the calls verl's decoupled old log-prob pass makes on the actor's worker group."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __getattr__(self, name: str):
        return lambda index: self.calls.append((name, index))


class _Batch:
    def __init__(self) -> None:
        self.extra_info: dict = {}


def test_old_log_probs_run_inside_verls_restored_pi_old_window(monkeypatch):
    """CREDIT's old log-prob step (the logit level records the student's top-k there) wraps verl's separate_async
    one, which scores with the weights of the last sync: pi_old for every mini-batch of the cycle."""
    trainer = CreditSeparateAsyncTrainer.__new__(CreditSeparateAsyncTrainer)
    trainer.config = _config(*SEPARATE)
    trainer.credit = check_start_up(trainer.config)
    trainer.actor_rollout_wg = workers = _Workers()
    monkeypatch.setattr(
        PPOTrainer, "_compute_old_log_prob", lambda self, batch, metrics: workers.calls.append(("old", 0)) or batch
    )
    for step, calls in [
        (0, [("save_model_to_cpu", 0), ("old", 0)]),
        (
            1,
            [
                ("save_model_to_cpu", 1),
                ("restore_model_from_cpu", 0),
                ("old", 0),
                ("restore_model_from_cpu", 1),
                ("clear_cpu_model", 1),
            ],
        ),
    ]:
        workers.calls.clear()
        trainer.local_trigger_step = step
        trainer._compute_old_log_prob(_Batch(), {})
        assert workers.calls == calls


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            [*SEPARATE, "credit.num_negatives=4"],
            r"credit.num_negatives=4 needs 5 prompt groups per update, and each update's batch has 4 "
            r"\(data.train_batch_size=8 / trainer.v1.separate_async.parameter_sync_step=2\)",
        ),
        (
            [f"trainer.v1.trainer_mode={COLOCATE_ASYNC}", "data.train_batch_size=2", "credit.num_negatives=2"],
            r"credit.num_negatives=2 needs 3 prompt groups per update, and each update's batch has 2",
        ),
        (
            [*SEPARATE, "credit.teacher=current"],
            "credit.teacher=current with trainer.v1.trainer_mode=credit_separate_async and "
            "trainer.v1.separate_async.parameter_sync_step=2",
        ),
        ([*SEPARATE, "credit.granularity=logit"], "credit_separate_async supports credit.granularity=token only"),
        (
            [
                f"trainer.v1.trainer_mode={COLOCATE_ASYNC}",
                "credit.granularity=logit",
                "algorithm.rollout_correction.rollout_is=token",
            ],
            "does not support algorithm.rollout_correction.rollout_is=token",
        ),
    ],
)
def test_unsupported_async_combinations_are_refused_naming_the_option(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_start_up(_config(*overrides))


def test_what_the_async_modes_accept():
    # SDPO has no negatives; the current teacher is pi_old itself with one update per sync
    check_start_up(_config(*SEPARATE, "algorithm.adv_estimator=sdpo", "credit.num_negatives=4"))
    check_start_up(_config(*SEPARATE, "credit.teacher=current", "trainer.v1.separate_async.parameter_sync_step=1"))
    check_start_up(_config(f"trainer.v1.trainer_mode={COLOCATE_ASYNC}", "credit.granularity=logit"))
    check_start_up(_config(f"trainer.v1.trainer_mode={COLOCATE_ASYNC}", "credit.teacher=current"))
