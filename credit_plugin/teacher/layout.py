"""verl's no-padding layout of the teacher pass: the worker input and its budget.

Notation: ``B`` samples, ``K`` negatives, ``V = 1 + K`` variants, ``T`` response tokens. Every variant is
followed by the sample's *unchanged* response token ids. Only scored variants are sent (samples without a
teacher context are skipped, see ``build_teacher_batch``), variant-major: all scored originals in sample order,
then the scored variants of negative ``k = 0``, ..., ``k = K - 1``, followed by padding rows that make the row
count a multiple of ``row_multiple``. ``row_index[v, i]`` is the row of variant ``v`` of sample ``i``, -1 if
not scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDict
from transformers import PreTrainedTokenizerBase
from verl.utils import tensordict_utils as tu

from credit_plugin.teacher.contexts import TeacherContexts


@dataclass
class TeacherBatch:
    """One teacher pass: the worker input and what is needed to read its output back.

    Attributes:
        data: the ``compute_log_prob`` input, ``num_rows`` rows in verl's no-padding layout: jagged
            ``input_ids`` (prompt ++ response), ``position_ids``, ``prompts``, ``responses``,
            ``response_mask``, ``loss_mask``; metadata ``temperature``, ``calculate_entropy``,
            ``compute_loss``, ``max_seq_len``, ``max_response_len``.
        negatives: shape (B, K), the batch row whose prompt variant ``k + 1`` uses.
        self_distillation_mask: shape (B,) float, 1 where the sample has a teacher context.
        has_solution, uses_feedback, feedback_available, truncated: shape (B,) bool.
        prompt_lengths: shape (V, B), token length of each scored variant's teacher prompt, 0 where not scored.
        response_mask: shape (B, T) float, the samples' response mask, right-padded.
        num_padding_rows: rows appended after the scored rows (dropped when reading back).
        row_index: shape (V, B) long, the row of ``data`` holding variant ``v`` of sample ``i``, -1 where that
            variant is not scored.
    """

    data: TensorDict
    negatives: torch.LongTensor
    self_distillation_mask: torch.FloatTensor
    has_solution: torch.BoolTensor
    uses_feedback: torch.BoolTensor
    feedback_available: torch.BoolTensor
    truncated: torch.BoolTensor
    prompt_lengths: torch.LongTensor
    response_mask: torch.FloatTensor
    num_padding_rows: int
    row_index: torch.LongTensor

    @property
    def num_samples(self) -> int:
        return self.negatives.shape[0]

    @property
    def num_negatives(self) -> int:
        return self.negatives.shape[1]

    @property
    def num_rows(self) -> int:
        return len(self.data)

    @property
    def sanity_rows(self) -> torch.BoolTensor:
        """Shape (B,): samples without a teacher context whose plain row (variant 0) was scored."""
        return (self.row_index[0] >= 0) & ~self.self_distillation_mask.bool()

    def metrics(self, prefix: str = "credit/teacher") -> dict[str, float]:
        """Fractions of samples with a teacher context, a solution, used feedback; prompt lengths of the scored
        rows (``prompt_len_mean``: the variant-0 prompts); rows sent per sample (``rows_per_sample``)."""
        if self.num_samples == 0:
            return {}
        scored = self.row_index >= 0
        lengths = self.prompt_lengths.float()
        return {
            f"{prefix}/rows_per_sample": (self.num_rows - self.num_padding_rows) / self.num_samples,
            f"{prefix}/context_fraction": self.self_distillation_mask.mean().item(),
            f"{prefix}/solution_fraction": self.has_solution.float().mean().item(),
            f"{prefix}/feedback_fraction": self.uses_feedback.float().mean().item(),
            f"{prefix}/feedback_available_fraction": self.feedback_available.float().mean().item(),
            f"{prefix}/truncated_fraction": self.truncated.float().mean().item(),
            f"{prefix}/prompt_len_mean": lengths[0][scored[0]].mean().item() if scored[0].any() else 0.0,
            f"{prefix}/prompt_len_max": lengths.max().item(),
        }


def token_rows(name: str, value: torch.Tensor | Sequence, batch_size: int) -> list[torch.Tensor]:
    """Per-row 1-D tensors from a jagged nested tensor or a sequence of 1-D tensors/lists."""
    if isinstance(value, torch.Tensor) and not value.is_nested:
        raise ValueError(
            f"{name} must be a jagged nested tensor or a sequence of 1-D rows: a padded tensor does not say "
            "where each row ends"
        )
    rows = list(value.unbind(0)) if isinstance(value, torch.Tensor) else list(value)
    if len(rows) != batch_size:
        raise ValueError(f"{name} has {len(rows)} rows, expected {batch_size} (one per sample)")
    rows = [torch.as_tensor(row, dtype=torch.long) for row in rows]
    for index, row in enumerate(rows):
        if row.dim() != 1:
            raise ValueError(f"{name} of sample {index} must be 1-D token ids, got shape {tuple(row.shape)}")
    return rows


def _jagged(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Jagged nested tensor of rows of ``lengths`` packed in ``values``.

    The min/max row lengths are cached on it: without them ``to_padded_tensor`` pads to the total length.
    """
    return torch.nested.nested_tensor_from_jagged(
        values,
        offsets=torch.nn.functional.pad(lengths.cumsum(0), (1, 0)),
        min_seqlen=int(lengths.min()),
        max_seqlen=int(lengths.max()),
    )


def _jagged_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    return _jagged(torch.cat(rows), torch.tensor([row.numel() for row in rows], dtype=torch.long))


def assemble(
    teacher_prompts: list[list[list[int]]],
    response_rows: list[torch.Tensor],
    mask_rows: list[torch.Tensor],
    contexts: TeacherContexts,
    negatives: torch.LongTensor,
    truncated: torch.BoolTensor,
    tokenizer: PreTrainedTokenizerBase,
    temperature: float,
    row_multiple: int,
) -> TeacherBatch:
    """Lay the scored rows (``teacher_prompts`` entries that are not None) out variant-major, pad the row count,
    and build the :class:`TeacherBatch`."""
    batch_size, num_variants = len(teacher_prompts), 1 + negatives.shape[1]
    scored = [
        (variant, index)
        for variant in range(num_variants)
        for index in range(batch_size)
        if teacher_prompts[index][variant] is not None
    ]
    row_index = torch.full((num_variants, batch_size), -1, dtype=torch.long)
    for row, (variant, index) in enumerate(scored):
        row_index[variant, index] = row
    prompt_rows = [torch.tensor(teacher_prompts[index][variant], dtype=torch.long) for variant, index in scored]
    data, num_padding = no_padding_rows(
        prompt_rows,
        [response_rows[index] for _, index in scored],
        [mask_rows[index] for _, index in scored],
        tokenizer,
        temperature,
        row_multiple,
    )
    return TeacherBatch(
        data=data,
        negatives=negatives,
        self_distillation_mask=contexts.mask,
        has_solution=contexts.has_solution,
        uses_feedback=contexts.uses_feedback,
        feedback_available=contexts.feedback_available,
        truncated=truncated,
        prompt_lengths=torch.tensor(
            [[len(teacher_prompts[i][v] or ()) for i in range(batch_size)] for v in range(num_variants)],
            dtype=torch.long,
        ).reshape(num_variants, batch_size),
        response_mask=padded_mask(mask_rows),
        num_padding_rows=num_padding,
        row_index=row_index,
    )


def padded_mask(mask_rows: list[torch.Tensor]) -> torch.FloatTensor:
    """The samples' response masks right-padded to the longest: shape (B, T) float."""
    return _jagged_rows(mask_rows).to_padded_tensor(0).float()


def no_padding_rows(
    prompt_rows: list[torch.Tensor],
    response_rows: list[torch.Tensor],
    mask_rows: list[torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    temperature: float,
    row_multiple: int,
) -> tuple[TensorDict, int]:
    """verl's jagged ``compute_log_prob`` input: row ``r`` is ``prompt_rows[r]`` followed by response
    ``r % len(response_rows)`` (``response_rows`` repeats when there are fewer of them, as in ``V * B`` rows with
    row ``v * B + i`` holding response ``i``); padding rows make the count a multiple of ``row_multiple``.

    Returns:
        (the TensorDict, the number of padding rows appended).
    """
    num_variants = len(prompt_rows) // len(response_rows)
    prompt_rows = list(prompt_rows)
    responses = response_rows * num_variants
    masks = [mask.long() for mask in mask_rows] * num_variants
    num_padding = -len(prompt_rows) % row_multiple
    if num_padding:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # the shortest legal row (verl needs a non-empty prompt); its zero loss_mask keeps it out of any loss
        pad = torch.tensor([pad_id], dtype=torch.long)
        prompt_rows += [pad] * num_padding
        responses += [pad] * num_padding
        masks += [torch.zeros(1, dtype=torch.long)] * num_padding

    sequences = [t for pair in zip(prompt_rows, responses, strict=True) for t in pair]
    lengths = torch.tensor([p.numel() + r.numel() for p, r in zip(prompt_rows, responses, strict=True)])
    starts = lengths.cumsum(0) - lengths
    positions = torch.arange(int(lengths.sum())) - torch.repeat_interleave(starts, lengths)
    data = tu.get_tensordict(
        {
            "input_ids": _jagged(torch.cat(sequences), lengths),
            "position_ids": _jagged(positions, lengths),
            "prompts": _jagged_rows(prompt_rows),
            "responses": _jagged_rows(responses),
            "response_mask": _jagged_rows(masks),
            "loss_mask": _jagged_rows(masks),
        },
        non_tensor_dict={
            "temperature": float(temperature),
            "calculate_entropy": False,
            "compute_loss": False,
            "max_seq_len": int(lengths.max()),
            "max_response_len": max(r.numel() for r in responses),
        },
    )
    return data, num_padding


def fit_token_budget(data: TensorDict, max_token_len_per_gpu: int | None) -> TensorDict:
    """Raise the worker's per-micro-batch token budget (dynamic batch size) to fit the longest row of ``data``.

    Reprompts make teacher rows longer than the rollout's, and verl refuses a row over the budget.

    Args:
        data: a no-padding batch (jagged ``input_ids``), changed in place.
        max_token_len_per_gpu: the engine's configured ``log_prob_max_token_len_per_gpu`` (None: unset).

    Returns:
        ``data``, with the non-tensor ``max_token_len_per_gpu`` set.
    """
    longest = int(data["input_ids"].offsets().diff().max())
    tu.assign_non_tensor(data, max_token_len_per_gpu=max(int(max_token_len_per_gpu or 0), longest))
    return data
