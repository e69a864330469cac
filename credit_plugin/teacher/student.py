"""The student's side of ``contrast_form: pmi``: every sample's response under the rollout prompts of its K
negatives, without feedback, scored by the policy itself (``S' = log pi_theta(y_t | x_{sigma_k(i)}, y_<t)``).

Row ``row_index[k, i]`` is the other input of sample ``i``'s contrast variant ``k + 1`` (negative row
``negatives[i, k]``, the teacher batch's negatives) followed by sample ``i``'s unchanged response, then padding
rows to the worker's row multiple. The input is the one the teacher's variant swaps in (``credit.contrast_swap``),
without feedback: with ``prompt`` the negative's rollout prompt ids (what the policy saw for it), with
``question`` sample ``i``'s messages with the negative's question (``swapped_prompts``, rendered by
``TeacherPrompts.swapped``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDict
from transformers import PreTrainedTokenizerBase

from credit_plugin.teacher.layout import no_padding_rows, padded_mask, token_rows
from credit_plugin.teacher.readback import variant_log_probs


@dataclass(frozen=True)
class StudentContrastBatch:
    """One student pass of ``contrast_form: pmi``.

    Attributes:
        data: the ``compute_log_prob`` input, ``K * B`` real rows then ``num_padding_rows``.
        negatives: shape (B, K), the batch row whose rollout prompt row ``k * B + i`` uses.
        response_mask: shape (B, T) float, the samples' response mask, right-padded.
        num_padding_rows: rows appended after the real rows.
        row_index: shape (K, B), the row of ``data`` holding negative ``k`` of sample ``i``, -1 where not scored.
    """

    data: TensorDict
    negatives: torch.LongTensor
    response_mask: torch.FloatTensor
    num_padding_rows: int
    row_index: torch.LongTensor

    @property
    def num_rows(self) -> int:
        return len(self.data)


def build_student_contrast_batch(
    *,
    prompts: torch.Tensor | Sequence,
    responses: torch.Tensor | Sequence,
    response_mask: torch.Tensor | Sequence,
    negatives: torch.LongTensor,
    tokenizer: PreTrainedTokenizerBase,
    temperature: float = 1.0,
    row_multiple: int = 1,
    swapped_prompts: Sequence | None = None,
    samples: Sequence[int] | None = None,
) -> StudentContrastBatch:
    """The student pass over the negatives of a teacher batch.

    Args:
        prompts: B rows of rollout prompt ids (what the policy saw for each sample).
        responses: B rows of response token ids, reused unchanged.
        response_mask: B rows, same lengths as ``responses``.
        negatives: shape (B, K), ``TeacherBatch.negatives``.
        tokenizer: the rollout tokenizer (its pad id fills the padding rows).
        temperature: the rollout temperature, as for ``old_log_probs``.
        row_multiple: pad the row count to a multiple of it (see ``build_teacher_batch``).
        swapped_prompts: one prompt id row per scored pair, in row order (``k``-major, then sample), to use
            instead of the negatives' rollout prompts (``contrast_swap: question``).
        samples: the samples to score (those with a teacher context: the others get no distillation signal);
            default all. ``row_index`` maps the rows back.
    """
    batch_size = negatives.shape[0]
    if row_multiple < 1:
        raise ValueError(f"row_multiple must be >= 1, got {row_multiple}")
    prompt_rows = token_rows("prompts", prompts, batch_size)
    response_rows = token_rows("responses", responses, batch_size)
    mask_rows = token_rows("response_mask", response_mask, batch_size)
    samples = list(range(batch_size)) if samples is None else sorted(int(index) for index in samples)
    pairs = [(k, index) for k in range(negatives.shape[1]) for index in samples]
    row_index = torch.full((negatives.shape[1], batch_size), -1, dtype=torch.long)
    for row, (k, index) in enumerate(pairs):
        row_index[k, index] = row
    if swapped_prompts is None:
        swapped = [prompt_rows[int(negatives[index, k])] for k, index in pairs]
    else:
        swapped = token_rows("swapped_prompts", swapped_prompts, len(pairs))
    data, num_padding = no_padding_rows(
        swapped,
        [response_rows[index] for _, index in pairs],
        [mask_rows[index] for _, index in pairs],
        tokenizer,
        temperature,
        row_multiple,
    )
    return StudentContrastBatch(
        data=data,
        negatives=negatives,
        response_mask=padded_mask(mask_rows),
        num_padding_rows=num_padding,
        row_index=row_index,
    )


def split_student_log_probs(
    log_probs: torch.Tensor, batch: StudentContrastBatch, width: int | None = None
) -> torch.Tensor:
    """``student_contrast_log_probs``: shape (B, K, T), 0 where the sample's ``response_mask`` is 0;
    ``log_probs`` is the worker output's jagged ``log_probs`` of ``batch``."""
    gathered = variant_log_probs(log_probs, batch.data, batch.response_mask, batch.row_index, width)
    return gathered.transpose(0, 1)
