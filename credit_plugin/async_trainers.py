"""CREDIT under verl's asynchronous v1 trainers: ``trainer.v1.trainer_mode: credit_colocate_async`` and
``credit_separate_async``.

Each class is :class:`credit_plugin.trainer.CreditSteps` mixed before verl's own trainer class, so verl's hooks
(``on_init_end``, ``on_train_begin``, ``on_sample_end``, ``on_step_end``: warm-up batches, aborting and resuming
partial rollouts, weight sync) and its replay buffer run unchanged, and CREDIT's steps (teacher pass, advantages,
EMA teacher step, teacher checkpoint) run around verl's per-update methods. No verl trainer body is copied.
What the asynchronous modes change for the teacher and the student is in docs/method.md ("Asynchronous trainers");
what is refused, in :func:`credit_plugin.async_modes.check_async_mode`.
"""

from __future__ import annotations

from verl.experimental.separation.engine_workers import DetachActorWorker
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync
from verl.trainer.ppo.v1.trainer_separate_async import PPOTrainerSeparateAsync

from credit_plugin.async_modes import COLOCATE_ASYNC, SEPARATE_ASYNC, VERL_MODES
from credit_plugin.trainer import CreditSteps
from credit_plugin.workers import CreditActorRolloutRefWorker


class CreditDetachActorWorker(CreditActorRolloutRefWorker, DetachActorWorker):
    """The plugin's worker (EMA, trust-region and logit-level methods) with verl's ``DetachActorWorker`` methods
    (``save_model_to_cpu`` / ``restore_model_from_cpu``), which ``separate_async``'s decoupled old log-prob pass
    calls to score ``old_log_probs`` with the weights of the last sync (pi_old)."""


@register_trainer(COLOCATE_ASYNC)
class CreditColocateAsyncTrainer(CreditSteps, PPOTrainerColocateAsync):
    """verl's ``PPOTrainerColocateAsync`` (partial rollouts across weight versions) with CREDIT's steps."""

    VERL_MODE = VERL_MODES[COLOCATE_ASYNC]


@register_trainer(SEPARATE_ASYNC)
class CreditSeparateAsyncTrainer(CreditSteps, PPOTrainerSeparateAsync):
    """verl's ``PPOTrainerSeparateAsync`` (rollout on its own pool, weights synced every ``parameter_sync_step``
    mini-batches) with CREDIT's steps; the teacher pass and the EMA step run once per mini-batch update."""

    VERL_MODE = VERL_MODES[SEPARATE_ASYNC]
    WORKER = CreditDetachActorWorker
