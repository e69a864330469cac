"""Per-token credit records of a few samples per step, for the credit report (``python -m credit_plugin.report``).

With ``credit.token_records: N`` (0, the default, writes nothing) the CREDIT trainer appends, after each step's
advantages, one JSON line per chosen sample to ``<credit.token_records_dir>/token_records.jsonl`` (by default
``trainer.default_local_dir``): the response's tokens and, token by token, the teacher's log-prob ``T`` (with
the sample's feedback), the contrastive baseline ``g`` (the teacher under other groups' prompts), the
student's ``S`` (``old_log_probs``), SDPO's reward ``T - S``, CREDIT's reward of the run's form and lambda
and the advantage the update used (before the loss scale); and per sample the prompt, the outcome score, the
feedback and the sibling's solution the teacher saw.

Which samples: samples with a teacher context first (the others carry no distillation credit), one per
prompt group before a second of any group, in batch order; so at most ``N`` lines per step. The cost is one
read of those rows' texts from verl's store and decoding their tokens; nothing when off.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from credit_plugin.config import CreditConfig
from credit_plugin.rewards import contrastive_baseline, credit_token_rewards, sdpo_token_rewards

RECORDS_FILE = "token_records.jsonl"
# verl's store fields read for the chosen rows' texts (the feedback fields: reward_manager.FEEDBACK_FIELDS).
TEXT_FIELDS = ("prompts", "responses", "raw_prompt")


def choose_rows(uids: Sequence, context: torch.Tensor, limit: int) -> list[int]:
    """Up to ``limit`` row indices: rows with a teacher context first, then one row per prompt group before a
    second of the same group, batch order within each rank.

    Args:
        uids: length B, the prompt group of each row.
        context: shape (B,), nonzero where the row has a teacher context.
        limit: how many rows at most.
    """
    seen: dict[tuple[int, Any], int] = {}
    ranked = []
    for row, uid in enumerate(uids):
        kind = 0 if bool(context[row]) else 1
        rank = seen.get((kind, uid), 0)  # the row's place among its group's rows of the same kind
        seen[(kind, uid)] = rank + 1
        ranked.append((kind, rank, row))
    return [row for *_, row in sorted(ranked)[: max(limit, 0)]]


def _values(tensor: torch.Tensor | None, row: int, length: int) -> list[float] | None:
    if tensor is None:
        return None
    return [round(float(value), 5) for value in tensor[row, :length].tolist()]


def prompt_text(raw_prompt: Any) -> str:
    """The prompt as the user wrote it: a chat's messages as ``role: content`` lines, or the text itself."""
    if isinstance(raw_prompt, str):
        return raw_prompt
    messages = list(raw_prompt) if raw_prompt is not None else []
    if messages and all(isinstance(message, dict) for message in messages):
        return "\n".join(f"{message.get('role', '?')}: {message.get('content', '')}" for message in messages)
    return str(raw_prompt)


@dataclass(frozen=True)
class TokenScores:
    """The step's per-token scores of every row (padding rows included), shape (B, T) unless said.

    Attributes:
        teacher: ``T``, ``teacher_log_probs``.
        student: ``S``, ``old_log_probs``.
        baseline: ``g`` aggregated over the K negatives, or None without negatives (SDPO).
        sdpo: ``T - S`` on scored tokens, 0 elsewhere.
        credit: CREDIT's reward of the run's form and lambda, or None without negatives.
        advantages: the estimator's advantages (before the trainer's loss scale), None before the estimator ran.
        response_mask: 1 on response tokens.
        context: shape (B,), ``self_distillation_mask``.
    """

    teacher: torch.Tensor
    student: torch.Tensor
    baseline: torch.Tensor | None
    sdpo: torch.Tensor
    credit: torch.Tensor | None
    advantages: torch.Tensor | None
    response_mask: torch.Tensor
    context: torch.Tensor


def token_scores(batch: Any, credit: CreditConfig) -> TokenScores:
    """SDPO's and CREDIT's token rewards rebuilt from the teacher pass's fields of ``batch`` (verl's
    ``DataProto.batch``; ``advantages`` once ``compute_advantage`` ran), with the functions the estimator uses.

    Scored tokens: the response tokens of rows with a teacher context (the estimator's mask).
    """
    response_mask = batch["response_mask"].float()
    context = batch["self_distillation_mask"].float()
    mask = response_mask * context[:, None]
    teacher, student = batch["teacher_log_probs"].float(), batch["old_log_probs"].float()
    sdpo = sdpo_token_rewards(teacher, student, mask)
    keys = set(batch.keys())
    contrast = batch["contrast_log_probs"] if "contrast_log_probs" in keys else None
    baseline = rewards = None
    if contrast is not None and contrast.dim() == 3 and contrast.shape[1] > 0:
        contrast = contrast.float()
        baseline = contrastive_baseline(contrast, mask, credit.negative_aggregate)
        student_contrast = batch["student_contrast_log_probs"] if "student_contrast_log_probs" in keys else None
        rewards = credit_token_rewards(
            teacher_log_probs=teacher,
            contrast_log_probs=contrast,
            student_log_probs=student,
            response_mask=mask,
            contrast_coef=credit.contrast_coef,
            aggregate=credit.negative_aggregate,
            form=credit.contrast_form,
            student_contrast_log_probs=None if student_contrast is None else student_contrast.float(),
            centering=credit.contrast_centering,
        )
    advantages = batch["advantages"].float() if "advantages" in keys else None
    return TokenScores(teacher, student, baseline, sdpo, rewards, advantages, response_mask, context)


def build_records(
    step: int,
    rows: Sequence[int],
    scores: TokenScores,
    uids: Sequence,
    outcome: torch.Tensor,
    tokens: Sequence[Sequence[str]],
    token_ids: Sequence[Sequence[int]],
    prompts: Sequence[str],
    feedback: Sequence[str | None],
    solutions: Sequence[str | None],
    credit: CreditConfig,
) -> list[dict]:
    """One JSON-ready record per row of ``rows`` (the per-row sequences are in the order of ``rows``).

    Args:
        step: the training step.
        rows: batch rows to record.
        scores: the step's :class:`TokenScores`.
        uids: length B, prompt group of every row.
        outcome: shape (B,), the outcome score of every row.
        tokens: per recorded row, its response tokens as text, one entry per response token.
        token_ids: per recorded row, its response token ids.
        prompts, feedback, solutions: per recorded row, the prompt text, the feedback the teacher saw (None:
            none) and the sibling's solution the teacher saw (None: none).
        credit: the run's options (lambda and form go into each record).
    """
    records = []
    for position, row in enumerate(rows):
        length = len(token_ids[position])
        if len(tokens[position]) != length:
            raise ValueError(f"token_records: row {row} has {len(tokens[position])} token texts for {length} ids")
        records.append(
            {
                "step": int(step),
                "row": int(row),
                "uid": str(uids[row]),
                "prompt": prompts[position],
                "feedback": feedback[position],
                "solution": solutions[position],
                "outcome": float(outcome[row]),
                "has_context": bool(scores.context[row] > 0),
                "contrast_coef": credit.contrast_coef,
                "contrast_form": credit.contrast_form,
                "tokens": list(tokens[position]),
                "token_ids": [int(token) for token in token_ids[position]],
                "teacher_log_probs": _values(scores.teacher, row, length),
                "baseline_log_probs": _values(scores.baseline, row, length),
                "student_log_probs": _values(scores.student, row, length),
                "sdpo": _values(scores.sdpo, row, length),
                "credit": _values(scores.credit, row, length),
                "advantage": _values(scores.advantages, row, length),
            }
        )
    return records


def append_records(directory: str | os.PathLike, records: list[dict]) -> Path:
    """Append ``records`` as JSON lines to ``directory/token_records.jsonl`` (created as needed)."""
    path = Path(directory) / RECORDS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    return path


def records_dir(credit: CreditConfig, trainer_config: Any) -> str:
    """``credit.token_records_dir``, or the run's ``trainer.default_local_dir``."""
    return credit.token_records_dir or str(trainer_config.default_local_dir)


def write_step_records(
    step: int,
    batch_meta: Any,
    data: Any,
    is_real: torch.BoolTensor,
    tokenizer: Any,
    credit: CreditConfig,
    directory: str,
) -> int:
    """The trainer's hook: choose ``credit.token_records`` real rows of this step, read their texts from verl's
    store and append their records. Returns how many were written.

    Args:
        step: the training step.
        batch_meta: the step's ``KVBatchMeta`` (keys of every row, padding included).
        data: the ``DataProto`` of ``_compute_advantage`` after ``compute_advantage`` (teacher fields, uid,
            advantages, ``token_level_scores``).
        is_real: shape (B,), False on verl's balance-padding rows.
        tokenizer: the run's tokenizer (decodes each response token on its own).
        credit: the run's options.
        directory: where ``token_records.jsonl`` goes.
    """
    import transfer_queue as tq

    from credit_plugin.reward_manager import FEEDBACK_FIELDS, feedback_of
    from credit_plugin.teacher.contexts import select_demonstrations, teacher_contexts

    if credit.token_records == 0:
        return 0
    b = data.batch
    uids = list(data.non_tensor_batch["uid"])
    outcome = b["token_level_scores"].float().sum(-1)
    scores = token_scores(b, credit)
    real = is_real.nonzero().flatten().tolist()
    context = scores.context[real]
    chosen = [real[index] for index in choose_rows([uids[row] for row in real], context, credit.token_records)]
    if not chosen:
        return 0
    # SDPO's contexts over the real rows; only the chosen rows and their demonstrations are read and decoded.
    real_uids = np.array([uids[row] for row in real], dtype=object)
    position_of = {row: index for index, row in enumerate(real)}
    demonstrations = select_demonstrations(
        real_uids, outcome[real], credit.success_threshold, exclude_self=credit.dont_reprompt_on_self_success
    )
    needed = sorted({position_of[row] for row in chosen} | {int(demonstrations[position_of[row]]) for row in chosen})
    needed = [position for position in needed if position >= 0]
    keys = [batch_meta.keys[real[position]] for position in needed]
    fields = tq.kv_batch_get(
        keys=keys, partition_id=batch_meta.partition_id, select_fields=[*TEXT_FIELDS, *FEEDBACK_FIELDS]
    )
    fetched = {position: index for index, position in enumerate(needed)}
    responses = list(fields["responses"].unbind(0))
    texts = [""] * len(real)
    feedback: list[str | None] = [None] * len(real)
    for position, text in zip(needed, feedback_of(fields, len(needed)), strict=True):
        texts[position] = tokenizer.decode(responses[fetched[position]].tolist(), skip_special_tokens=True)
        feedback[position] = text
    # the texts of rows that are neither chosen nor a chosen row's demonstration stay empty: unread below
    contexts = teacher_contexts(real_uids, outcome[real], feedback, texts, credit)
    raw_prompts = list(fields["raw_prompt"])
    token_ids, tokens, prompts, used_feedback, solutions = [], [], [], [], []
    for row in chosen:
        position = position_of[row]
        ids = responses[fetched[position]].tolist()
        token_ids.append(ids)
        tokens.append([tokenizer.decode([token]) for token in ids])
        prompts.append(prompt_text(raw_prompts[fetched[position]]))
        used_feedback.append(contexts.feedback[position])
        solutions.append(contexts.solution[position])
    records = build_records(
        step, chosen, scores, uids, outcome, tokens, token_ids, prompts, used_feedback, solutions, credit
    )
    append_records(directory, records)
    return len(records)
