"""``trainer.v1.trainer_mode: credit``: verl's sync PPO trainer plus the teacher pass.

Between ``old_log_probs`` and the actor update, :meth:`CreditTrainer._compute_advantage` builds the
teacher inputs of the batch (SDPO reprompts and CREDIT's contrast variants, ``credit_plugin.teacher``),
scores all ``1 + K`` variants in **one** worker call, and hands the scores to the ``credit``/``sdpo``
estimator through verl's ``compute_advantage``. The teacher pass itself (which engine, how many rows, the
worker call, reading back) is :class:`credit_plugin.teacher_scoring.TeacherScorer`; this class holds the verl
hooks it overrides, the worker mapping, the EMA teacher's lifecycle and the step's metrics.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections import Counter

import numpy as np
import ray
import torch
import transfer_queue as tq
import verl
from omegaconf import DictConfig
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.protocol import DataProto
from verl.trainer.ppo.ray_trainer import apply_kl_penalty
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch
from verl.trainer.ppo.utils import Role, need_reference_policy
from verl.trainer.ppo.v1 import utils as v1_utils
from verl.trainer.ppo.v1.trainer_base import PPOTrainer, register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.debug import marked_timer
from verl.workers.utils.padding import response_to_nested

from credit_plugin.async_modes import check_async_mode
from credit_plugin.config import CreditConfig
from credit_plugin.diagnostics import AdvantageDriftWatch, generic_credit_stats, token_advantage_stats
from credit_plugin.estimators import ESTIMATORS, SDPO, TEACHER_BATCH_KEYS
from credit_plugin.logit_scoring import LogitTeacherScorer, logit_level_fields
from credit_plugin.megatron_layout import check_same_layout, check_trust_region_pipeline
from credit_plugin.patches import SUPPORTED_VERL
from credit_plugin.registry import TRAINER_MODE, assert_registered
from credit_plugin.rewards import contrastive_baseline, sdpo_token_rewards
from credit_plugin.teacher_scoring import TeacherScorer
from credit_plugin.token_records import records_dir, token_scores, write_step_records
from credit_plugin.workers import CreditActorRolloutRefWorker, has_teacher_weights, rotate_teacher_checkpoints

logger = logging.getLogger(__name__)

# sha256 of ``inspect.getsource(PPOTrainer._compute_advantage)`` in verl 0.9.1, the body that
# :meth:`CreditTrainer._compute_advantage` mirrors; checked when the trainer starts (:func:`check_mirrored_upstream`).
UPSTREAM_COMPUTE_ADVANTAGE_SHA256 = "2a4a2aa4a475b228d401959818e0b9019276ce27961c133961de217baa387da7"

# Teachers that need the frozen (ref) model next to the actor; ``current`` is the actor itself.
REF_TEACHERS = ("frozen", "ema", "trust_region")
# Teachers computed from both engines of one hybrid worker.
HYBRID_TEACHERS = ("ema", "trust_region")
# Storage dtypes (verl's config spellings) in which the ``ema`` teacher's in-place step survives rounding.
EMA_STORAGE_DTYPES = ("fp32", "float32", "fp64", "float64")


def credit_options(config: DictConfig) -> CreditConfig:
    """The ``credit:`` options a run acts on; ``adv_estimator=sdpo`` means ``contrast_coef=0`` everywhere,
    so the teacher pass scores one variant per sample (no negatives), as the estimator uses. The options are
    checked as the run uses them: under ``sdpo`` with no contrast (so e.g. ``topk_source=teacher``, refused with a
    contrast at logit level, is SDPO's to use whatever ``contrast_coef`` says)."""
    estimator = str(config.algorithm.adv_estimator)
    if estimator not in ESTIMATORS:
        raise ValueError(f"trainer_mode=credit needs algorithm.adv_estimator in {ESTIMATORS}, got {estimator!r}")
    section = dict(config.get("credit") or {})
    if estimator == SDPO:
        section["contrast_coef"] = 0.0
    credit = CreditConfig.from_dict(section)
    if credit.granularity == "logit":
        check_logit_level(config)
    return credit


def check_mirrored_upstream() -> None:
    """Raise unless the installed verl's ``PPOTrainer._compute_advantage`` is the body the trainer mirrors.

    :meth:`CreditTrainer._compute_advantage` copies its control flow (KL in reward, rollout correction, the
    fields written back) with the teacher pass added; another verl build with a changed body would otherwise
    run the old flow silently.
    """
    try:
        source = inspect.getsource(PPOTrainer._compute_advantage)
    except (OSError, TypeError) as error:
        raise RuntimeError(
            "trainer_mode=credit checks verl's PPOTrainer._compute_advantage against the body it mirrors, but its "
            f"source cannot be read ({error}); install verl from a wheel or source tree that ships its .py files"
        ) from error
    digest = hashlib.sha256(source.encode()).hexdigest()
    if digest != UPSTREAM_COMPUTE_ADVANTAGE_SHA256:
        raise RuntimeError(
            f"trainer_mode=credit mirrors verl {' or '.join(SUPPORTED_VERL)}'s PPOTrainer._compute_advantage, and the "
            f"installed verl {verl.__version__} has a different one (sha256 {digest[:12]}..., expected "
            f"{UPSTREAM_COMPUTE_ADVANTAGE_SHA256[:12]}...): install verl=={SUPPORTED_VERL[0]}, or a credit_plugin "
            "release that supports this verl"
        )


def check_logit_level(config: DictConfig) -> None:
    """Refuse the verl settings the logit-level path does not serve (docs/method.md, "Logit level"), naming each."""
    section = config.actor_rollout_ref
    actor = section.actor
    megatron = (actor.get("megatron") or {}) if actor.get("strategy") == "megatron" else {}
    correction = config.algorithm.get("rollout_correction") or {}
    refusals = {
        "actor_rollout_ref.actor.megatron.pipeline_model_parallel_size > 1 (the top-k passes read the logits on "
        "every rank)": (megatron.get("pipeline_model_parallel_size", 1) or 1) > 1,
        "actor_rollout_ref.actor.megatron.context_parallel_size > 1": (megatron.get("context_parallel_size", 1) or 1)
        > 1,
        "actor_rollout_ref.actor.megatron.dynamic_context_parallel=true": bool(
            megatron.get("dynamic_context_parallel", False)
        ),
        "actor_rollout_ref.actor.ulysses_sequence_parallel_size > 1": (
            actor.get("ulysses_sequence_parallel_size", 1) or 1
        )
        > 1,
        "actor_rollout_ref.model.use_fused_kernels=true (the loss needs the logits)": bool(
            section.model.get("use_fused_kernels", False)
        ),
        "algorithm.use_kl_in_reward=true (at logit level there is no advantage to carry the penalty; use "
        "actor_rollout_ref.actor.use_kl_loss)": bool(config.algorithm.get("use_kl_in_reward", False)),
        "algorithm.rollout_correction.bypass_mode=true (the student's top-k comes from the old log-prob pass)": bool(
            correction.get("bypass_mode", False)
        ),
        # verl multiplies its PPO term by the IS weights; at logit level that term is zero (outcome_mix is refused)
        # and the distillation loss carries no per-token weight, so the correction would silently not act, in the
        # sync trainer as in the async ones
        f"algorithm.rollout_correction.rollout_is={correction.get('rollout_is')} (the logit-level loss has no "
        "importance weight): leave rollout_is null (rollout_rs acts) or use credit.granularity=token": correction.get(
            "rollout_is"
        )
        is not None,
        f"actor_rollout_ref.actor.loss_agg_mode={actor.get('loss_agg_mode')} (use token-mean or "
        "seq-mean-token-mean)": actor.get("loss_agg_mode", "token-mean") not in ("token-mean", "seq-mean-token-mean"),
    }
    refused = [name for name, bad in refusals.items() if bad]
    if refused:
        raise ValueError(f"credit.granularity=logit does not support {refused[0]}")


def check_one_output_per_session(keys: list[str]) -> None:
    """Refuse agent loops that return several outputs per session (verl's keys ``{uid}_{session}_{index}``).

    verl copies a session's final score into each of its outputs: a partial output could become a sibling's
    demonstration, or a final output's own earlier output its "sibling" solution, and the ``outcome_mix`` GRPO
    term would count a session once per output. The teacher contexts are defined per sample, so refuse.
    """
    sessions = Counter(key.rsplit("_", 1)[0] for key in keys)
    several = {session: count for session, count in sessions.items() if count > 1}
    if several:
        shown = dict(list(several.items())[:4])
        raise ValueError(
            f"trainer_mode=credit needs one output per agent-loop session; sessions {shown} (session: outputs) "
            "returned several, whose teacher contexts and outcome scores are not defined per output: use an agent "
            "loop that returns one output per session"
        )


def context_loss_scale(response_mask: torch.Tensor, self_distillation_mask: torch.Tensor, loss_agg_mode: str) -> float:
    """Factor that turns verl's loss aggregation over all samples into SDPO's over samples with a context.

    Args:
        response_mask: shape (B, T), the real rows of the step.
        self_distillation_mask: shape (B,), 1 where the sample has a teacher context.
        loss_agg_mode: the actor's ``loss_agg_mode``.

    Returns:
        ``token-mean``: response tokens / response tokens with context; ``seq-mean-*``: sequences / sequences
        with context; ``token-sum`` (no denominator), or no sample with context: 1. Per step: with several
        mini-batches per step verl normalises each by its own count, so the match is of the step's average.
    """
    context = self_distillation_mask.bool()
    if loss_agg_mode == "token-mean":
        total, kept = response_mask.sum(), response_mask[context].sum()
    elif loss_agg_mode.startswith("seq-mean"):
        rows = response_mask.sum(-1) > 0
        total, kept = rows.sum(), (rows & context).sum()
    else:
        return 1.0
    return float(total / kept) if kept > 0 else 1.0


def ref_in_actor(config: DictConfig) -> bool:
    """Whether verl keeps the reference model inside the actor (LoRA: the actor with its adapter disabled).

    Args:
        config: the ``actor_rollout_ref`` section.
    """
    model = config.model
    lora_rank = model.get("lora", {}).get("rank", 0) or model.get("lora_rank", 0)
    return lora_rank > 0 or model.get("lora_adapter_path") is not None


def check_megatron(config: DictConfig, credit: CreditConfig) -> None:
    """Refuse Megatron settings the teacher pass cannot serve, naming the option.

    Args:
        config: the ``actor_rollout_ref`` section.
    """
    actor = config.actor.megatron
    if actor.get("dynamic_context_parallel", False):
        # verl's dynamic-CP scheduler refuses the distillation hook (trust_region) and spreads every batch over
        # the DPxCP plane, where the teacher batch's row padding assumes plain data parallelism.
        raise ValueError(
            "trainer_mode=credit does not support actor_rollout_ref.actor.megatron.dynamic_context_parallel=true"
        )
    if actor.get("router_replay", {}).get("mode", "disabled") != "disabled":
        # Replay feeds each sequence the routes recorded when it was generated; the teacher's reprompted
        # sequences were never generated, so there are no routes to replay for them.
        raise ValueError(
            "trainer_mode=credit does not support actor_rollout_ref.actor.megatron.router_replay.mode="
            f"{actor.router_replay.mode}: the teacher's reprompted sequences have no recorded routes; use disabled"
        )
    if credit.teacher == "trust_region":
        if ref_in_actor(config):
            raise ValueError(
                "credit.teacher=trust_region with model_engine=megatron needs a ref engine as its frozen model; "
                "with LoRA (the ref model lives in the actor) use the FSDP engines or credit.teacher=frozen"
            )
        check_trust_region_pipeline(actor)
    if credit.teacher in HYBRID_TEACHERS:
        check_same_layout(config.ref.megatron, actor, teacher=credit.teacher)


def check_ema_ref_dtype(config: DictConfig) -> None:
    """Refuse an FSDP ref engine stored below fp32 for ``credit.teacher=ema`` (an EMA step is lost to rounding).

    The Megatron ref engine is exempt: verl's ``McoreEngineConfig`` accepts only bf16/fp16, so the worker keeps
    the EMA state in an fp32 copy of each shard and casts it into the ref after every step
    (``credit_plugin.workers.ema_step``). On FSDP the ref's ``model_dtype`` can simply be fp32.

    Args:
        config: the ``actor_rollout_ref`` section.
    """
    if config.ref.get("strategy", config.actor.get("strategy")) == "megatron":
        return
    ref_dtype = str(config.ref.get("fsdp_config", {}).get("model_dtype", "fp32"))
    if ref_dtype not in EMA_STORAGE_DTYPES:
        raise ValueError(
            f"credit.teacher=ema needs the ref engine's weights in fp32 (an EMA step of "
            f"credit.teacher_update_rate is lost to {ref_dtype} rounding): set "
            "actor_rollout_ref.ref.fsdp_config.model_dtype=fp32"
        )


def check_start_up(config: DictConfig) -> CreditConfig:
    """Every check of a CREDIT run that needs only its config (what ``CreditTrainer`` refuses before any worker
    starts), so that a recipe can be checked as a GPU run would start it, without one.

    Args:
        config: the whole resolved ``main_ppo`` config.

    Returns:
        The ``credit:`` options the run acts on (:func:`credit_options`).
    """
    credit = credit_options(config)
    check_async_mode(config, credit)
    section = config.actor_rollout_ref
    if section.actor.get("strategy") == "megatron":
        check_megatron(section, credit)
    if credit.teacher == "ema":
        check_ema_ref_dtype(section)
        if ref_in_actor(section):
            raise ValueError(
                "credit.teacher=ema with LoRA (the ref model lives in the actor) is not supported; "
                "use credit.teacher=frozen, trust_region or current"
            )
    return credit


class CreditSteps:
    """CREDIT's steps over any of verl's v1 trainer classes: the teacher pass before the advantage estimator, the
    EMA teacher's step after each actor update, its checkpoint, and the plugin's worker.

    Mixed in before a verl trainer class (``class T(CreditSteps, PPOTrainerSync)``), so each override here runs
    CREDIT's part around verl's own method of that class (``super()``); only ``_compute_advantage`` mirrors a
    verl body (pinned by :func:`check_mirrored_upstream`). ``VERL_MODE`` is the verl trainer mode whose semantics
    the class keeps (``credit_plugin.async_trainers`` adds the asynchronous ones).
    """

    # verl's trainer mode of the class mixed with (its replay buffer, dataloader refill, checkpoint contents,
    # ``trainer.v1.<mode>`` options).
    VERL_MODE = "sync"
    # The worker class the plugin puts in the actor's role (its EMA, trust-region and logit-level methods).
    WORKER = CreditActorRolloutRefWorker

    def __init__(self, config: DictConfig):
        assert_registered()
        check_mirrored_upstream()
        self.credit = check_start_up(config)
        self.advantage_watch = AdvantageDriftWatch()
        super().__init__(config)

    # The base class reads ``trainer_mode`` from the config and compares it with "sync" in several places
    # (replay buffer, dataloader, checkpoints) and reads ``trainer.v1.<mode>`` options: registered as "credit"
    # it would silently get async semantics and no options. This attribute answers the verl mode the class
    # keeps, while the config (logged, saved) keeps what the user set.
    @property
    def trainer_mode(self) -> str:
        return self.VERL_MODE

    @trainer_mode.setter
    def trainer_mode(self, value: str) -> None:
        """verl's ``__init__`` assigns the configured name (e.g. ``credit``); the class's verl mode stays."""

    def _check_megatron(self, config: DictConfig) -> None:
        """Refuse Megatron settings the teacher pass cannot serve, naming the option."""
        check_megatron(config, self.credit)

    # ------------------------------------------------------------------ workers

    def _init_resource_pool_mgr(self):
        """Use the plugin's worker (EMA and trust-region methods), with a ref engine when the teacher needs one."""
        super()._init_resource_pool_mgr()
        roles = [role for role in (Role.ActorRolloutRef, Role.ActorRollout, Role.Actor) if role in self.mapping]
        role = roles[0]
        teacher = self.credit.teacher
        if teacher in HYBRID_TEACHERS and role == Role.Actor:
            raise ValueError(f"credit.teacher={teacher} needs the actor and ref engines in one worker (hybrid engine)")
        if (
            teacher == "frozen"
            and role == Role.Actor
            and not (self._ref_in_actor() or need_reference_policy(self.config))
        ):
            raise ValueError(
                "credit.teacher=frozen without the hybrid engine scores the teacher on verl's ref worker, which verl "
                "only starts with a KL term: use the hybrid engine, or set actor_rollout_ref.actor.use_kl_loss=true "
                "with actor_rollout_ref.actor.kl_loss_coef=0 (a KL term that does not change training)"
            )
        if teacher in REF_TEACHERS and role == Role.ActorRollout and not self._ref_in_actor():
            del self.role_worker_mapping[role]
            self.mapping[Role.ActorRolloutRef] = self.mapping.pop(role)
            role = Role.ActorRolloutRef
        self.role_worker_mapping[role] = ray.remote(self.WORKER)

    def _setup(self):
        super()._setup()
        # verl wires ref_policy_wg only when it computes ref log-probs for a KL term itself.
        if self.credit.teacher in REF_TEACHERS and getattr(self, "ref_policy_wg", None) is None:
            self.ref_policy_wg = self.actor_rollout_wg

    def _ref_in_actor(self) -> bool:
        return ref_in_actor(self.config.actor_rollout_ref)

    def _compute_old_log_prob(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        """verl's old log-prob pass; at logit level with the student's support it also records the student's
        top-k ids and log-probs per response token (``credit_plugin.logit_workers``)."""
        record = self.credit.granularity == "logit" and self.credit.topk_source == "student"
        if record:
            batch.extra_info["credit_topk"] = self.credit.topk
        try:
            output = super()._compute_old_log_prob(batch, metrics)
        finally:
            batch.extra_info.pop("credit_topk", None)
        if record:
            output.extra_info.pop("credit_topk", None)
        return output

    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        if self.credit.granularity == "logit":
            options = {
                "topk": self.credit.topk,
                "add_tail": self.credit.distillation_add_tail,
                "alpha": self.credit.alpha,
                "is_clip": self.credit.is_clip,
                # SDPO's average over samples with a context, of this step's batch (_scale_to_context_mean)
                "loss_scale": self._logit_loss_scale,
            }
            batch.extra_info["credit_logit"] = json.dumps(options)
        try:
            batch = super()._update_actor(batch, metrics)
        finally:
            batch.extra_info.pop("credit_logit", None)
        if self.credit.teacher == "ema":
            with marked_timer("teacher_ema", self.timing_raw):
                changes = self.actor_rollout_wg.update_teacher_ema(self.credit.teacher_update_rate)
            metrics["credit/teacher_ema_max_change"] = float(max(changes))
        return batch

    def _teacher_folder(self) -> str:
        return os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}", "teacher")

    def _save_checkpoint(self):
        """verl's checkpoint, plus the EMA teacher, which no other checkpoint holds.

        Order matters for a kill mid-save: verl's ``_save_checkpoint`` ends by writing
        ``latest_checkpointed_iteration.txt``, the mark resume trusts. The teacher is written before it, so a
        step marked complete always has its teacher (a kill before the mark resumes from the previous step,
        whose teacher is still there); old teacher folders are rotated only after the mark.
        """
        if self.credit.teacher == "ema":
            self.actor_rollout_wg.save_teacher(self._teacher_folder())
        super()._save_checkpoint()
        if self.credit.teacher == "ema":
            max_to_keep = self.config.trainer.get("max_actor_ckpt_to_keep", None)
            if self.config.trainer.get("remove_previous_ckpt_in_save", False):
                max_to_keep = 1  # as verl rotates the actor
            rotate_teacher_checkpoints(self.config.trainer.default_local_dir, max_to_keep)

    def _load_checkpoint(self):
        """On resume, the EMA teacher continues from its saved weights, not from the initial model."""
        super()._load_checkpoint()
        if self.credit.teacher != "ema" or self.global_steps == 0:
            return
        folder = self._teacher_folder()
        if not has_teacher_weights(folder):
            raise FileNotFoundError(
                f"resuming an EMA-teacher run from step {self.global_steps} needs the teacher saved at {folder}; "
                "set credit.teacher=frozen or start a new run"
            )
        self.actor_rollout_wg.load_teacher(folder)

    # ------------------------------------------------------------ teacher pass

    def _teacher_scorer(self) -> TeacherScorer:
        """This step's teacher pass over the trainer's worker groups (``credit_plugin.teacher_scoring``)."""
        ref_wg = getattr(self, "ref_policy_wg", None)
        scorer = LogitTeacherScorer if self.credit.granularity == "logit" else TeacherScorer
        return scorer(self.config, self.credit, self.actor_rollout_wg, ref_wg, self._ref_in_actor())

    def _teacher_metrics(
        self, data: DataProto, is_real: torch.BoolTensor, metrics: dict, sanity_rows: torch.BoolTensor | None = None
    ) -> None:
        """pMI, baseline and the sanity gap, over samples with a teacher context (padding rows excluded); the gap
        over ``sanity_rows`` (shape (B,)), the rows without context whose plain teacher row was scored."""
        b = data.batch
        context = b["self_distillation_mask"].bool()
        mask = b["response_mask"] * b["self_distillation_mask"][:, None]
        if context.any():
            pmi = sdpo_token_rewards(b["teacher_log_probs"], b["old_log_probs"], mask).sum(-1)
            metrics["credit/pmi_mean"] = pmi[context].mean().item()
            if b["contrast_log_probs"].shape[1] > 0:
                baseline = contrastive_baseline(b["contrast_log_probs"], mask, self.credit.negative_aggregate)
                metrics["credit/baseline_mean"] = baseline.sum(-1)[context].mean().item()
                contrast_gap = torch.where(mask.bool(), b["teacher_log_probs"] - baseline, 0.0)
                metrics["credit/contrast_gap_mean"] = contrast_gap.sum(-1)[context].mean().item()
                metrics["credit/baseline_token_mean"] = (baseline.sum() / mask.sum()).item()
                scores = token_scores(b, self.credit)  # how much of SDPO's credit any prompt earns
                metrics.update(generic_credit_stats(scores.teacher, baseline, scores.student, scores.credit, mask))
        # Rows without context were scored under their original prompt: a ``current`` teacher must
        # reproduce ``old_log_probs`` there (a check of the layout); other teachers show their drift.
        plain = (~context) & (b["response_mask"].sum(-1) > 0) & is_real
        if sanity_rows is not None:
            plain = plain & sanity_rows
        if plain.any():
            gap = torch.where(b["response_mask"].bool(), (b["teacher_log_probs"] - b["old_log_probs"]).abs(), 0.0)[
                plain
            ]
            metrics["credit/teacher_sanity_gap"] = (gap.sum() / b["response_mask"][plain].sum()).item()

    def _advantage_metrics(self, data: DataProto, metrics: dict) -> None:
        """Signals that show a collapse early: the token advantages' mean and positive fraction over scored
        tokens, and a warning when the mean stays far from zero (see :class:`AdvantageDriftWatch`)."""
        mask = data.batch["response_mask"] * data.batch["self_distillation_mask"][:, None]
        stats = token_advantage_stats(data.batch["advantages"], mask)
        metrics.update(stats)
        warning = self.advantage_watch.update(stats.get("credit/advantage/token_mean"), self.global_steps)
        if warning:
            logger.warning(warning)
            print(f"WARNING: {warning}", flush=True)

    # ------------------------------------------------------------- advantages

    def _scale_to_context_mean(self, data: DataProto, is_real: torch.BoolTensor, metrics: dict) -> None:
        """SDPO averages its loss over samples with a teacher context; verl's actor loss over every sample.

        Without ``outcome_mix`` the samples without context have advantage 0 and add nothing but their count
        to verl's denominator; multiplying the advantages by :func:`context_loss_scale` (a positive factor,
        which PPO's clipped objective is linear in) makes the update SDPO's. With ``outcome_mix > 0`` the
        GRPO term acts on every sample and verl's denominator (all response tokens) stays.
        """
        scale = 1.0
        if self.credit.outcome_mix == 0:
            b = data.batch
            scale = context_loss_scale(
                b["response_mask"][is_real],
                b["self_distillation_mask"][is_real],
                self.config.actor_rollout_ref.actor.loss_agg_mode,
            )
            b["advantages"] = b["advantages"] * scale
            b["returns"] = b["returns"] * scale
        metrics["credit/loss_scale"] = scale

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        """verl's ``PPOTrainer._compute_advantage`` with the teacher fields added to the batch.

        Mirrors the upstream body (a test pins its source hash): the teacher pass's outputs must sit in
        ``data.batch`` when verl's ``compute_advantage`` runs, and upstream reads a fixed field list.
        """
        check_one_output_per_session(batch.keys)
        fields = ["uid", "response_mask", "rm_scores", "rollout_log_probs", "old_log_probs", "ref_log_prob", "values"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)

        response_mask = data["response_mask"]
        data = DataProto(batch=data.to_padded_tensor())
        data.batch["token_level_scores"] = data.batch["rm_scores"]
        data.non_tensor_batch["uid"] = np.array(data.batch.pop("uid").tolist(), dtype=object)

        is_real = torch.tensor([not tag.get("is_padding", False) for tag in batch.tags])
        with marked_timer("teacher", self.timing_raw):
            width = data.batch["response_mask"].shape[1]
            teacher = self._teacher_scorer().teacher_fields(
                batch, is_real, width, self.tokenizer, self.global_steps, metrics
            )
        logit_fields = logit_level_fields(teacher)
        for key in TEACHER_BATCH_KEYS:
            if key in teacher:
                data.batch[key] = teacher[key]
        self._teacher_metrics(data, is_real, metrics, teacher.get("teacher_sanity_rows"))

        if self.config.algorithm.use_kl_in_reward:
            data, kl_metrics = apply_kl_penalty(
                data, kl_ctrl=self.kl_ctrl_in_reward, kl_penalty=self.config.algorithm.kl_penalty
            )
            metrics.update(kl_metrics)
        else:
            data.batch["token_level_rewards"] = data.batch["token_level_scores"]

        rollout_corr_config = self.config.algorithm.get("rollout_correction", None)
        bypass_recomputing_logprobs = rollout_corr_config and rollout_corr_config.get("bypass_mode", False)
        rollout_correction = (
            rollout_corr_config is not None and "rollout_log_probs" in data.batch and not bypass_recomputing_logprobs
        )
        if rollout_correction:
            data, is_metrics = compute_rollout_correction_and_add_to_batch(data, rollout_corr_config)
            metrics.update(is_metrics)

        data = v1_utils.compute_advantage_for_multi_trajectories(
            data,
            batch_keys=batch.keys,
            adv_estimator=self.config.algorithm.adv_estimator,
            gamma=self.config.algorithm.gamma,
            lam=self.config.algorithm.lam,
            num_repeat=self.config.actor_rollout_ref.rollout.n,
            norm_adv_by_std_in_grpo=self.config.algorithm.get("norm_adv_by_std_in_grpo", True),
            config=self.credit,
        )

        self._advantage_metrics(data, metrics)
        if self.credit.token_records:  # the credit report's per-token records (credit_plugin.token_records)
            directory = records_dir(self.credit, self.config.trainer)
            write_step_records(self.global_steps, batch, data, is_real, self.tokenizer, self.credit, directory)
        self._scale_to_context_mean(data, is_real, metrics)
        self._logit_loss_scale = metrics["credit/loss_scale"]
        if logit_fields:
            # the logit-level loss replaces the advantage; verl's PPO loss keeps only its entropy and KL terms
            data.batch["advantages"] = torch.zeros_like(data.batch["advantages"])
            data.batch["returns"] = torch.zeros_like(data.batch["returns"])

        fields = ["advantages", "returns"]
        if self.config.algorithm.use_kl_in_reward:
            fields.append("token_level_rewards")
        if rollout_correction:
            fields.append("response_mask")
            if "rollout_is_weights" in data.batch:
                fields.append("rollout_is_weights")

        output = {field: response_to_nested(data.batch[field], response_mask) for field in fields}
        output.update(logit_fields)
        output = TensorDict(output, batch_size=len(batch))
        return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=output)


@register_trainer(TRAINER_MODE)
class CreditTrainer(CreditSteps, PPOTrainerSync):
    """verl's ``PPOTrainerSync`` with CREDIT's teacher pass before the advantage estimator."""
