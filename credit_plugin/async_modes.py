"""CREDIT's asynchronous trainer modes: their names, the verl mode each keeps, and the start-up checks.

``trainer.v1.trainer_mode: credit_colocate_async`` is verl's ``colocate_async`` trainer (partial rollouts across
weight versions) with CREDIT's steps; ``credit_separate_async`` is verl's ``separate_async`` (rollout on its own
pool, weights synced every ``parameter_sync_step`` mini-batches). The trainer classes are in
``credit_plugin.async_trainers``; this module holds only what a config alone decides (docs/method.md,
"Asynchronous trainers"), so that ``check_start_up`` and the recipe checks can run it without workers.
"""

from __future__ import annotations

from omegaconf import DictConfig

from credit_plugin.config import CreditConfig

COLOCATE_ASYNC = "credit_colocate_async"
SEPARATE_ASYNC = "credit_separate_async"
# CREDIT's trainer mode -> the verl trainer mode whose semantics (replay buffer, checkpoint, options) it keeps.
VERL_MODES = {"credit": "sync", COLOCATE_ASYNC: "colocate_async", SEPARATE_ASYNC: "separate_async"}


def prompt_groups_per_update(config: DictConfig, verl_mode: str) -> int:
    """Prompt groups in the batch one ``_compute_advantage`` call sees: verl's step samples
    ``train_batch_size / parameter_sync_step`` groups per local update (``PPOTrainer.step``); the negatives of a
    sample are drawn among these groups only."""
    sync_step = config.trainer.v1.get(verl_mode, {}).get("parameter_sync_step", 1) or 1
    return int(config.data.train_batch_size) // int(sync_step)


def check_negatives(config: DictConfig, credit: CreditConfig, verl_mode: str) -> None:
    """Refuse ``credit.num_negatives`` above the other prompt groups of one update's batch, naming both options.

    The contrastive baseline draws each sample's K negatives from K distinct *other* prompt groups of the batch
    the advantage is computed on (``credit_plugin.negatives``); under ``separate_async`` that batch is one
    mini-batch of ``train_batch_size / parameter_sync_step`` groups, not the step's.
    """
    if credit.contrast_coef == 0:
        return
    groups = prompt_groups_per_update(config, verl_mode)
    if credit.num_negatives > groups - 1:
        where = (
            f"data.train_batch_size={config.data.train_batch_size} / "
            f"trainer.v1.{verl_mode}.parameter_sync_step={config.trainer.v1[verl_mode].parameter_sync_step}"
            if verl_mode == "separate_async"
            else f"data.train_batch_size={config.data.train_batch_size}"
        )
        raise ValueError(
            f"credit.num_negatives={credit.num_negatives} needs {credit.num_negatives + 1} prompt groups per update, "
            f"and each update's batch has {groups} ({where}): the negatives come from the other prompt groups of "
            "that batch; lower credit.num_negatives or raise the prompt groups per update"
        )


def check_async_mode(config: DictConfig, credit: CreditConfig) -> None:
    """Refuse what CREDIT does not serve under the configured asynchronous mode, naming the option.

    Args:
        config: the whole resolved ``main_ppo`` config.
        credit: the ``credit:`` options the run acts on.
    """
    mode = str(config.trainer.v1.trainer_mode)
    verl_mode = VERL_MODES.get(mode)
    if verl_mode is None or verl_mode == "sync":
        return
    check_negatives(config, credit, verl_mode)
    correction = config.algorithm.get("rollout_correction") or {}
    if verl_mode != "separate_async":
        return
    if credit.granularity == "logit":
        raise ValueError(
            f"trainer.v1.trainer_mode={mode} supports credit.granularity=token only: the student's top-k support "
            "would be recorded under the restored pi_old weights of verl's decoupled old log-prob pass, which no "
            f"test covers; use credit.granularity=token or trainer.v1.trainer_mode={COLOCATE_ASYNC}"
        )
    sync_step = int(config.trainer.v1.separate_async.parameter_sync_step)
    bypass = bool(correction.get("bypass_mode", False))
    if credit.teacher == "current" and sync_step > 1 and not bypass:
        # verl scores old_log_probs with the restored pi_old (weights at the last sync) while the teacher pass runs
        # on the actor's current weights, j mini-batches newer: the advantage would mix that drift into the credit.
        raise ValueError(
            f"credit.teacher=current with trainer.v1.trainer_mode={mode} and "
            f"trainer.v1.separate_async.parameter_sync_step={sync_step}: the teacher would score with weights up to "
            f"{sync_step - 1} mini-batch updates newer than old_log_probs (pi_old); use credit.teacher=ema, frozen "
            "or trust_region, or parameter_sync_step=1"
        )
