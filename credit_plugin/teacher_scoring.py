"""The teacher pass of one training step on verl's workers: which engine scores the teacher, how many rows a
call needs, the one worker call for all ``1 + K`` variants of every sample, and reading the scores back.

Which call scores the teacher (:meth:`TeacherScorer.engine`):

- ``current``: the actor's ``compute_log_prob`` (the weights that generated the batch);
- ``frozen``/``ema``: the ref engine's ``compute_ref_log_prob`` (with LoRA, ``frozen`` is the actor with its
  adapter disabled, as verl scores its own reference); the ``ema`` ref engine follows the actor after every
  update (``credit_plugin.workers``);
- ``trust_region``: ``compute_trust_region_log_prob`` on the actor mesh, mixing the frozen and the actor's
  logits inside the worker.

``contrast_form: pmi`` adds one more call, whatever the teacher: the actor's ``compute_log_prob`` of every
response under its K swapped rollout prompts (:meth:`TeacherScorer.student_engine`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import transfer_queue as tq
from omegaconf import DictConfig
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from transformers import PreTrainedTokenizerBase
from verl.utils import tensordict_utils as tu

from credit_plugin.config import CreditConfig
from credit_plugin.negatives import negatives_generator
from credit_plugin.reward_manager import (
    EXTRA_FIELDS,
    FEEDBACK_FIELDS,
    feedback_of,
    reward_failed_of,
    reward_failure_metrics,
)
from credit_plugin.teacher import (
    TeacherBatch,
    build_student_contrast_batch,
    build_teacher_batch,
    fit_token_budget,
    split_student_log_probs,
    split_teacher_log_probs,
)
from credit_plugin.teacher.prompts import TeacherPrompts

# What the teacher pass reads from verl's store: the samples, their outcome scores and their feedback.
TEACHER_PASS_FIELDS = ("uid", "prompts", "responses", "response_mask", "rm_scores", "raw_prompt", *FEEDBACK_FIELDS)


@dataclass(frozen=True)
class TeacherEngine:
    """Where the teacher is scored.

    Attributes:
        wg: the worker group.
        call: its log-prob method, taking verl's no-padding TensorDict.
        mesh: the dispatch mesh of that method (``actor`` or ``ref``).
        batching: the config section holding that engine's log-prob batching (``log_prob_use_dynamic_bsz``...).
        call_fields: non-tensor fields the call needs on top of the teacher batch.
    """

    wg: Any
    call: Callable[[TensorDict], TensorDict]
    mesh: str
    batching: DictConfig
    call_fields: dict[str, Any] = field(default_factory=dict)


def data_parallel_size(wg: Any, mesh: str) -> int:
    """The number of data-parallel ranks of worker group ``wg`` on dispatch mesh ``mesh`` (``actor``, ``ref``).

    verl 0.9.1 has no public call for it. Its own trainer (``PPOTrainer._balance_batch``) reads the worker
    group's private ``_dispatch_info`` cache (rank -> dp rank, filled by ``_query_dispatch_info``) exactly so;
    this helper is the plugin's only access to it.
    """
    if mesh not in wg._dispatch_info:
        wg._dispatch_info[mesh] = wg._query_dispatch_info(mesh)
    return max(wg._dispatch_info[mesh]) + 1


def batch_fields(
    rows: int, real: list[int], teacher: TeacherBatch, teacher_lp: torch.Tensor, contrast_lp: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The token-level teacher fields of all ``rows`` rows of verl's batch, from the scores of its ``real`` rows.

    Args:
        rows: rows of verl's batch (padding rows included: they get zeros and mask 0).
        real: length B, the batch row of each scored sample.
        teacher: the :class:`TeacherBatch` of those B samples.
        teacher_lp: shape (B, T); contrast_lp: shape (B, K, T).
    """
    width = teacher_lp.shape[-1]
    result = {
        "teacher_log_probs": torch.zeros(rows, width),
        "contrast_log_probs": torch.zeros(rows, teacher.num_negatives, width),
        "self_distillation_mask": torch.zeros(rows),
        # rows without a context whose plain teacher row was scored (credit/teacher_sanity_gap)
        "teacher_sanity_rows": torch.zeros(rows, dtype=torch.bool),
    }
    index = torch.tensor(real, dtype=torch.long)
    result["teacher_log_probs"][index] = teacher_lp.float()
    result["contrast_log_probs"][index] = contrast_lp.float()
    result["self_distillation_mask"][index] = teacher.self_distillation_mask.float()
    result["teacher_sanity_rows"][index] = teacher.sanity_rows
    return result


@dataclass(frozen=True)
class TeacherScorer:
    """Scores the teacher pass of one step over the trainer's worker groups.

    Attributes:
        config: the trainer's config (``actor_rollout_ref``, ``data``).
        credit: the ``credit:`` options the run acts on.
        actor_wg: the actor worker group (with rollout, and ref in the hybrid engine).
        ref_wg: the worker group of verl's ref role, or None where the teacher does not need it.
        ref_in_actor: the frozen model is the actor with its LoRA adapter disabled.
    """

    config: DictConfig
    credit: CreditConfig
    actor_wg: Any
    ref_wg: Any
    ref_in_actor: bool

    def engine(self) -> TeacherEngine:
        """Which worker group and method score the configured teacher."""
        actor, rollout = self.actor_wg, self.config.actor_rollout_ref.rollout
        teacher = self.credit.teacher
        if teacher == "current":
            return self.student_engine()
        if teacher == "trust_region":
            coef = {"trust_region_coef": self.credit.teacher_update_rate}
            return TeacherEngine(actor, actor.compute_trust_region_log_prob, "actor", rollout, coef)
        if self.ref_in_actor:
            return TeacherEngine(actor, actor.compute_log_prob, "actor", rollout, {"no_lora_adapter": True})
        ref = self.ref_wg
        return TeacherEngine(ref, ref.compute_ref_log_prob, "ref", self.config.actor_rollout_ref.ref)

    def student_engine(self) -> TeacherEngine:
        """The policy itself (the actor's log-prob method): the student side of ``contrast_form: pmi``."""
        actor = self.actor_wg
        return TeacherEngine(actor, actor.compute_log_prob, "actor", self.config.actor_rollout_ref.rollout)

    def row_multiple(self, engine: TeacherEngine | None = None) -> int:
        """Rows must split evenly over data-parallel ranks, and into micro-batches without dynamic batching
        (on ``engine``, by default the teacher's)."""
        engine = engine or self.engine()
        dp_size = data_parallel_size(engine.wg, engine.mesh)
        if engine.batching.log_prob_use_dynamic_bsz:
            return dp_size
        micro_batch_size = engine.batching.get("log_prob_micro_batch_size_per_gpu")
        if micro_batch_size is None:  # verl's config validation refuses this at start-up; never int(None)
            raise ValueError(
                f"the teacher pass on the {engine.mesh} engine needs log_prob_micro_batch_size_per_gpu "
                "or log_prob_use_dynamic_bsz=true"
            )
        return dp_size * int(micro_batch_size)

    @staticmethod
    def score(engine: TeacherEngine, data: TensorDict) -> TensorDict:
        """One worker call for all rows of ``data`` (all ``(1 + K) * B`` of a teacher pass), with the token
        budget raised to fit reprompts."""
        batching = engine.batching
        if batching.log_prob_use_dynamic_bsz:
            fit_token_budget(data, batching.log_prob_max_token_len_per_gpu)
        tu.assign_non_tensor(data, **engine.call_fields)
        output = engine.call(data)
        if len(output) != len(data):
            raise RuntimeError(f"{engine.mesh} log-prob pass returned {len(output)} rows for {len(data)} sent")
        return output

    def student_contrast(
        self, data: TensorDict, teacher: TeacherBatch, width: int, tokenizer: PreTrainedTokenizerBase
    ) -> torch.Tensor:
        """``contrast_form: pmi``: the policy's scores of each response under its K swapped inputs (the ones the
        teacher's variants swap in, ``credit.contrast_swap``), shape (B, K, T), from one actor call (the weights of
        ``old_log_probs``)."""
        engine = self.student_engine()
        # Only samples with a teacher context use S' (the others get no distillation signal).
        samples = teacher.self_distillation_mask.nonzero().flatten().tolist()
        swapped = None
        if self.credit.contrast_swap == "question":
            renderer = TeacherPrompts(
                list(data["raw_prompt"]),
                [False] * teacher.num_samples,
                tokenizer,
                self.credit,
                self.config.data.get("apply_chat_template_kwargs", None),
            )
            pairs = [(i, int(teacher.negatives[i, k])) for k in range(teacher.num_negatives) for i in samples]
            swapped = renderer.swapped(pairs)
        student = build_student_contrast_batch(
            prompts=data["prompts"],
            responses=data["responses"],
            response_mask=data["response_mask"],
            negatives=teacher.negatives,
            tokenizer=tokenizer,
            temperature=self.config.actor_rollout_ref.rollout.temperature,
            row_multiple=self.row_multiple(engine),
            swapped_prompts=swapped,
            samples=samples,
        )
        return split_student_log_probs(self.score(engine, student.data)["log_probs"], student, width=width)

    def teacher_batch(
        self, data: TensorDict, size: int, tokenizer: PreTrainedTokenizerBase, step: int, engine: TeacherEngine
    ) -> TeacherBatch:
        """The teacher batch of the ``size`` samples read from verl's store (``TEACHER_PASS_FIELDS``), padded to
        ``engine``'s row multiple; negatives drawn for training step ``step``."""
        return build_teacher_batch(
            raw_prompt=list(data["raw_prompt"]),
            responses=data["responses"],
            response_mask=data["response_mask"],
            uid=np.array(list(data["uid"]), dtype=object),
            scores=data["rm_scores"].to_padded_tensor(0.0).sum(-1),
            feedback=feedback_of(data, size),
            # a sample whose scoring failed gets no teacher context: its score is not a verdict on the response
            excluded=reward_failed_of(data, size),
            tokenizer=tokenizer,
            config=self.credit,
            prompts=data["prompts"],
            apply_chat_template_kwargs=self.config.data.get("apply_chat_template_kwargs", None),
            generator=negatives_generator(self.credit.negative_seed, step),
            temperature=self.config.actor_rollout_ref.rollout.temperature,
            row_multiple=self.row_multiple(engine),
        )

    def teacher_fields(
        self,
        batch: KVBatchMeta,
        is_real: torch.BoolTensor,
        width: int,
        tokenizer: PreTrainedTokenizerBase,
        step: int,
        metrics: dict,
    ) -> dict[str, torch.Tensor]:
        """Teacher fields of every row of ``batch`` (padding rows: zeros and mask 0), padded to ``width``.

        Reads the real rows from verl's store, builds their teacher batch, scores it in one worker call and
        reads it back (``contrast_form: pmi``: plus one actor call, :meth:`student_contrast`); adds the teacher's
        and the reward failures' metrics of training step ``step``.
        """
        real = is_real.nonzero().flatten().tolist()
        keys = [batch.keys[index] for index in real]
        data = tq.kv_batch_get(keys=keys, partition_id=batch.partition_id, select_fields=list(TEACHER_PASS_FIELDS))
        size = len(real)
        engine = self.engine()
        teacher = self.teacher_batch(data, size, tokenizer, step, engine)
        output = self.score(engine, teacher.data)
        teacher_lp, contrast_lp = split_teacher_log_probs(output["log_probs"], teacher, width=width)
        metrics.update(teacher.metrics())
        if EXTRA_FIELDS in data.keys():
            metrics.update(reward_failure_metrics(list(data[EXTRA_FIELDS])))

        result = batch_fields(len(batch), real, teacher, teacher_lp, contrast_lp)
        if self.credit.contrast_form == "pmi" and teacher.num_negatives:
            result["student_contrast_log_probs"] = torch.zeros(len(batch), teacher.num_negatives, width)
            if teacher.self_distillation_mask.any():  # else no sample uses S': no call
                student_lp = self.student_contrast(data, teacher, width, tokenizer)
                result["student_contrast_log_probs"][torch.tensor(real)] = student_lp.float()
        return result
