"""Reading the worker's output of a teacher pass back into the samples' padded response layout."""

from __future__ import annotations

import torch
from tensordict import TensorDict

from credit_plugin.teacher.layout import TeacherBatch


def variant_log_probs(
    log_probs: torch.Tensor, data: TensorDict, response_mask: torch.Tensor, row_index: torch.Tensor, width: int | None
) -> torch.Tensor:
    """The worker's per-position log-probs of a variant batch, read back per response token through its index map.

    The worker returns, for every row, one value per sequence position ``p`` (prompt ++ response):
    ``log p(input_ids[p + 1] | input_ids[:p + 1])``, so response token ``t`` of a row whose sequence
    ends at ``e`` with ``R`` response tokens sits at position ``e - R - 1 + t`` (as verl's
    ``response_from_nested``). Padding rows are dropped.

    Args:
        log_probs: jagged nested tensor, one row per row of ``data`` (the worker output's ``log_probs``).
        data: the jagged batch the worker scored (the scored rows, then padding rows).
        response_mask: shape (B, T0), the samples' response mask.
        row_index: shape (V, B), the row of ``data`` holding variant ``v`` of sample ``i``, -1 where not scored.
        width: response width T of the result (>= T0); default T0.

    Returns:
        shape (V, B, T), 0 where the sample's ``response_mask`` is 0 and where the variant was not scored.
    """
    if not (isinstance(log_probs, torch.Tensor) and log_probs.is_nested):
        raise ValueError("log_probs must be the worker's jagged nested tensor (one value per sequence position)")
    expected = data["input_ids"].offsets().diff()
    got = log_probs.offsets().diff().to(expected.device)
    if got.shape != expected.shape or not torch.equal(got, expected):
        raise ValueError(
            f"log_probs rows do not match the teacher batch: {got.numel()} rows vs {expected.numel()} expected, "
            "or different sequence lengths (was the output reordered or padded rows dropped?)"
        )
    num_variants, num_samples = row_index.shape
    if num_samples != response_mask.shape[0]:
        raise ValueError(f"row_index covers {num_samples} samples, response_mask {response_mask.shape[0]}")
    width = response_mask.shape[1] if width is None else width
    if width < response_mask.shape[1]:
        raise ValueError(f"width={width} is shorter than the longest response ({response_mask.shape[1]} tokens)")
    mask = torch.nn.functional.pad(response_mask, (0, width - response_mask.shape[1]))

    values = log_probs.values()
    flat = row_index.reshape(-1).to(values.device)
    scored, rows = flat >= 0, flat.clamp(min=0)
    ends = log_probs.offsets()[1:].to(values.device)[rows]
    response_lengths = data["responses"].offsets().diff().to(values.device)[rows]
    position = torch.arange(width, device=values.device)
    index = (ends - response_lengths - 1)[:, None] + position
    inside = (position < response_lengths[:, None]) & scored[:, None]
    gathered = torch.where(inside, values[index.clamp(0, max(values.numel() - 1, 0))], 0.0)
    # where, not a product: a masked position may hold -inf (0 * -inf is NaN)
    return torch.where(mask.bool(), gathered.reshape(num_variants, num_samples, width), 0.0)


def split_teacher_log_probs(
    log_probs: torch.Tensor, batch: TeacherBatch, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the worker's per-token log-probs of a :class:`TeacherBatch` back (:func:`variant_log_probs`).

    Args:
        log_probs: jagged nested tensor with ``batch.num_rows`` rows (the worker output's ``log_probs``).
        batch: the :class:`TeacherBatch` the worker scored.
        width: response width T of the result; default the longest response.

    Returns:
        teacher_log_probs: shape (B, T), ``log pi_ref(y_t | reprompt(x_i, z_i), y_<t)``.
        contrast_log_probs: shape (B, K, T), ``log pi_ref(y_t | reprompt(x_{sigma_k(i)}, z_i), y_<t)``.
        Both are 0 where the sample's ``response_mask`` is 0 and for variants not scored (samples without context).
    """
    gathered = variant_log_probs(log_probs, batch.data, batch.response_mask, batch.row_index, width)
    return gathered[0], gathered[1:].transpose(0, 1)
