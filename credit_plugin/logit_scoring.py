"""The teacher pass of ``granularity: logit`` (driver side): one worker call for all ``1 + K`` variants, top-k.

Like :class:`credit_plugin.teacher_scoring.TeacherScorer` (same teacher batch, same rows, one call), but the
worker (``compute_teacher_topk``, ``credit_plugin.logit_workers``) returns per response token the teacher's
log-probs at ``k`` ids, normalised over the full vocabulary, besides the sampled token's. The ids are the
student's top-k recorded by the old log-prob pass (``topk_source: student``, read back from verl's store), or the
teacher's own (``topk_source: teacher``). The target of the actor's loss, ``log q`` on the bucketed support
(:func:`credit_plugin.distill.contrastive_topk_target`), is computed here and stored per sample.

What a step stores per response token: ``k`` int64 ids and ``k`` float32 target log-probs (and, on the way,
``k`` float32 log-probs for each of the ``1 + K`` variants and the student), i.e. ``(2 + 1 + K + 1) * k`` values
per token at most while the target is built, ``2 * k`` once stored for the update.
"""

from __future__ import annotations

import torch
import transfer_queue as tq
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from transformers import PreTrainedTokenizerBase

from credit_plugin import distill
from credit_plugin.logit_engines import DISTILL_MASK, STUDENT_TOPK, TARGET_TOPK, TOPK_IDS, flat_rows, padded_rows
from credit_plugin.logit_workers import TEACHER_LABEL, TEACHER_TOPK
from credit_plugin.reward_manager import EXTRA_FIELDS, reward_failure_metrics
from credit_plugin.teacher_scoring import TEACHER_PASS_FIELDS, TeacherEngine, TeacherScorer, batch_fields

LOGIT_BATCH_KEYS = (TOPK_IDS, TARGET_TOPK, DISTILL_MASK)


class LogitTeacherScorer(TeacherScorer):
    """The teacher pass at logit level over the trainer's worker groups (hybrid worker, FSDP)."""

    def engine(self) -> TeacherEngine:
        """``compute_teacher_topk`` on the actor mesh, told which teacher to run; batching of that teacher's engine."""
        credit, section = self.credit, self.config.actor_rollout_ref
        teacher = credit.teacher
        fields = {"credit_teacher": teacher, "credit_topk": credit.topk}
        batching = section.rollout
        if teacher == "trust_region":
            fields["trust_region_coef"] = credit.teacher_update_rate
        elif teacher in ("frozen", "ema"):
            if self.ref_in_actor:
                fields["no_lora_adapter"] = True
            else:
                if self.ref_wg is not None and self.ref_wg is not self.actor_wg:
                    raise ValueError(
                        f"credit.granularity=logit with credit.teacher={teacher} needs the ref engine inside the "
                        "actor's hybrid worker (verl's separate ref worker has no top-k pass)"
                    )
                batching = section.ref
        return TeacherEngine(self.actor_wg, self.actor_wg.compute_teacher_topk, "actor", batching, fields)

    def teacher_fields(
        self,
        batch: KVBatchMeta,
        is_real: torch.BoolTensor,
        width: int,
        tokenizer: PreTrainedTokenizerBase,
        step: int,
        metrics: dict,
    ) -> dict[str, torch.Tensor]:
        """The token-level teacher fields of :meth:`TeacherScorer.teacher_fields` (from the same pass's sampled
        tokens) plus :data:`LOGIT_BATCH_KEYS` for every row of ``batch`` (jagged, ``R_i * k`` / ``R_i`` values)."""
        credit = self.credit
        student_source = credit.topk_source == "student"
        real = is_real.nonzero().flatten().tolist()
        keys = [batch.keys[index] for index in real]
        fields = list(TEACHER_PASS_FIELDS) + ([TOPK_IDS, STUDENT_TOPK] if student_source else [])
        data = tq.kv_batch_get(keys=keys, partition_id=batch.partition_id, select_fields=fields)
        size = len(real)
        engine = self.engine()
        teacher = self.teacher_batch(data, size, tokenizer, step, engine)
        variants = 1 + teacher.num_negatives
        lengths = [int(n) for n in data["responses"].offsets().diff()]
        # the sample each row of the teacher batch scores (-1: padding), through the batch's index map
        row_sample = torch.full((teacher.num_rows,), -1, dtype=torch.long)
        scored = teacher.row_index >= 0
        row_sample[teacher.row_index[scored]] = scored.nonzero()[:, 1]
        row_lengths = [int(n) for n in teacher.data["responses"].offsets().diff()]
        if student_source:
            # k as the old pass stored it: it clamps credit.topk to the vocabulary
            k = data[TOPK_IDS].values().numel() // max(sum(lengths), 1)
            ids = [row.reshape(-1, k) for row in data[TOPK_IDS].unbind(0)]
            student = [row.reshape(-1, k) for row in data[STUDENT_TOPK].unbind(0)]
            teacher.data[TOPK_IDS] = flat_rows(
                [
                    ids[i] if i >= 0 else torch.zeros(n, k, dtype=torch.long)
                    for i, n in zip(row_sample.tolist(), row_lengths, strict=True)
                ]
            )
        output = self.score(engine, teacher.data)

        topk_rows = list(output[TEACHER_TOPK].unbind(0))
        label_rows = list(output[TEACHER_LABEL].unbind(0))
        if not student_source:
            k = topk_rows[0].numel() // max(row_lengths[0], 1)
        # (V, B, T, k) and (V, B, T): zeros for variants not scored (samples without a context)
        topk = torch.zeros(variants, size, width, k)
        labels = torch.zeros(variants, size, width)
        for variant, sample in scored.nonzero().tolist():
            row, n = int(teacher.row_index[variant, sample]), lengths[sample]
            topk[variant, sample, :n] = topk_rows[row].reshape(-1, k)
            labels[variant, sample, :n] = label_rows[row]
        if not student_source:  # the teacher's own top-k under the reprompt; unscored samples get no context
            teacher_ids = list(output[TOPK_IDS].unbind(0))
            ids = [
                teacher_ids[row].reshape(-1, k) if row >= 0 else torch.zeros(n, k, dtype=torch.long)
                for row, n in zip(teacher.row_index[0].tolist(), lengths, strict=True)
            ]
        mask = torch.nn.functional.pad(teacher.response_mask, (0, width - teacher.response_mask.shape[1])).bool()
        labels = torch.where(mask, labels, 0.0)
        # the target only where a context exists: the other samples' variants were not scored (zeros)
        context = teacher.self_distillation_mask.bool()
        target = torch.zeros(size, width, k)
        if context.any():
            target[context] = distill.contrastive_topk_target(
                topk[0, context],
                topk[1:, context].transpose(0, 1) if teacher.num_negatives else None,
                padded_rows(student, width)[context] if student_source else None,
                credit.contrast_coef,
                add_tail=credit.distillation_add_tail,
                aggregate=credit.negative_aggregate,
                form=credit.contrast_form,
            ).float()
            metrics.update(_support_metrics(topk[0, context], target[context], mask[context]))
        metrics.update(teacher.metrics())
        if EXTRA_FIELDS in data.keys():
            metrics.update(reward_failure_metrics(list(data[EXTRA_FIELDS])))

        result = batch_fields(len(batch), real, teacher, labels[0], labels[1:].transpose(0, 1))
        result.update(self._logit_rows(batch, real, lengths, ids, target, teacher.self_distillation_mask, k))
        return result

    @staticmethod
    def _logit_rows(
        batch: KVBatchMeta,
        real: list[int],
        lengths: list[int],
        ids: list[torch.Tensor],
        target: torch.Tensor,
        context: torch.Tensor,
        k: int,
    ) -> dict[str, torch.Tensor]:
        """:data:`LOGIT_BATCH_KEYS` for every row of ``batch``: padding rows get zeros (and mask 0)."""
        all_lengths = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["responses"])
        all_lengths = [int(n) for n in all_lengths["responses"].offsets().diff()]
        id_rows = [torch.zeros(n, k, dtype=torch.long) for n in all_lengths]
        target_rows = [torch.zeros(n, k) for n in all_lengths]
        mask_rows = [torch.zeros(n) for n in all_lengths]
        for position, row in enumerate(real):
            n = lengths[position]
            id_rows[row] = ids[position][:n]
            target_rows[row] = target[position, :n].float()
            mask_rows[row] = torch.full((n,), float(context[position]))
        return {TOPK_IDS: flat_rows(id_rows), TARGET_TOPK: flat_rows(target_rows), DISTILL_MASK: flat_rows(mask_rows)}


def _support_metrics(teacher_topk: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The teacher's top-k mass (under the reprompt), the target's, and the fraction of distilled tokens whose
    tail clamp (:func:`distill.tail_clamp_active`) is active in the target; over ``mask`` (B, T)."""
    if not mask.any():
        return {}
    return {
        "credit/logit/teacher_topk_mass": torch.logsumexp(teacher_topk, dim=-1).exp()[mask].mean().item(),
        "credit/logit/target_tail_clamp_fraction": distill.tail_clamp_active(target)[mask].float().mean().item(),
    }


def logit_level_fields(teacher: dict[str, torch.Tensor]) -> TensorDict | dict:
    """Pop :data:`LOGIT_BATCH_KEYS` out of a teacher pass's result (empty at token level)."""
    return {key: teacher.pop(key) for key in LOGIT_BATCH_KEYS if key in teacher}
