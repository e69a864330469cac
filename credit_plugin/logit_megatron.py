"""``granularity: logit`` inside verl's Megatron engine: the top-k passes and the actor's loss on vocabulary shards.

verl's ``MegatronEngineWithLMHead`` hands each micro-batch's temperature-scaled logits to the loss function when
the batch carries ``distillation_use_topk`` (its top-k distillation hook), as this tensor-parallel rank's
*vocabulary shard*, (B, S, V / TP) padded (``bshd``) or (1, N, V / TP) packed (``thd``), and turns every
per-position value the hook returns ((B, S, ...) or (1, N, ...)) into verl's nested per-sequence layout,
which the loss function then receives as ``model_output``. Here the hook works on the shard only
(``credit_plugin.vocab_shards``: a vocab-parallel logsumexp, per-shard gathers summed over the group, the
top-k from ``k`` candidates per shard), so no rank holds a position's full-vocabulary logits:

- :class:`MegatronTopkRecorder` (old log-prob pass and teacher pass): the hook gives, per position, the
  full-vocabulary log-probs at ``k`` ids (given, or the model's own top-k) and at the sampled token; the loss
  call reads the response tokens' values from the nested ``model_output`` and records them by row, as the FSDP
  :class:`~credit_plugin.logit_engines.TopkRecorder` does;
- :class:`MegatronLogitDistillationLoss` (actor update): the hook computes SDPO's per-token loss from the
  student's top-k log-probs at the stored ids (:func:`credit_plugin.distill.per_token_topk_loss`); the loss
  call aggregates it exactly as on FSDP (:class:`~credit_plugin.logit_engines.LogitDistillationLoss`).

Response-level fields (``R_i`` or ``R_i * k`` values per row) reach the hook's layout through verl's own
Megatron preprocessing (:func:`to_logits_layout`). Pipeline and context parallelism are refused at start-up
(``credit_plugin.trainer.check_logit_level``).
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu

from credit_plugin import distill
from credit_plugin.logit_engines import (
    DISTILL_MASK,
    ROW,
    TARGET_TOPK,
    TOPK_IDS,
    LogitDistillationLoss,
    TopkRecorder,
)
from credit_plugin.vocab_shards import shard_gather, shard_normalizer, shard_topk

# Per-position outputs of the recorder's hook (verl lays them out per sequence for the loss call).
_IDS, _TOPK, _LABEL = "credit_record_ids", "credit_record_topk", "credit_record_label"
# verl returns them from the pass too ((B, L_i, k) per sequence): the worker drops them, the records have them.
RECORD_FIELDS = (_IDS, _TOPK, _LABEL)


class TensorParallelCollectives:
    """:class:`credit_plugin.vocab_shards.ShardCollectives` over Megatron's tensor-parallel group."""

    def __init__(self) -> None:
        from megatron.core import parallel_state as mpu

        self.group = mpu.get_tensor_model_parallel_group()
        self.size = mpu.get_tensor_model_parallel_world_size()
        self.rank = mpu.get_tensor_model_parallel_rank()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region

        # forward all-reduce (in place on its input, hence the copy), backward identity
        return reduce_from_tensor_model_parallel_region(tensor.clone(), self.group)

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().clone().contiguous()
        if self.size > 1:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return tensor

    def cat_last(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        torch.distributed.all_gather(parts, tensor.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)

    def shard_start(self, width: int) -> int:
        """The first global id of this rank's vocabulary shard of ``width`` ids (Megatron's contiguous split)."""
        return self.rank * width


def _lengths(data: TensorDict) -> tuple[list[int], list[int]]:
    """Per row of a micro-batch: the sequence length ``L_i`` and the response length ``R_i``."""
    return data["input_ids"].offsets().diff().tolist(), data["responses"].offsets().diff().tolist()


def to_logits_layout(
    data: TensorDict, values: torch.Tensor, data_format: str, like: torch.Tensor, label: bool = False
) -> torch.Tensor:
    """Response-token values into the layout of the hook's logits ``like``.

    Args:
        data: the micro-batch (jagged ``input_ids`` and ``responses``).
        values: shape (sum_i R_i, ...): per response token, row after row. Response token ``t`` of a row of
            ``L`` tokens and ``R`` response tokens is predicted by the logits at position ``L - R - 1 + t``;
            other positions get zeros. With ``label=True`` ``values`` is ignored and the layout of the sampled
            tokens is returned instead (``input_ids`` shifted by one, as verl's labels).
        data_format: ``thd`` or ``bshd`` (the engine's, handed to the hook).
        like: the hook's logits, (B, S, V / TP) or (1, N, V / TP).

    Returns:
        shape ``like.shape[:2] + values.shape[1:]``, on ``like``'s device.
    """
    from verl.models.mcore.util import preprocess_bshd_engine, preprocess_thd_engine

    if label:
        nested = data["input_ids"]
    else:
        rows, offset = [], 0
        for length, response in zip(*_lengths(data), strict=True):
            row = values.new_zeros((length, *values.shape[1:]))
            row[length - response - 1 : length - 1] = values[offset : offset + response]
            rows.append(row)
            offset += response
        nested = torch.nested.as_nested_tensor(rows, layout=torch.jagged)
    if data_format == "thd":
        laid = preprocess_thd_engine(nested, pre_process=True, need_roll=label)[0]
    elif data_format == "bshd":
        forced = tu.get_non_tensor_data(data, key="forced_max_seqlen", default=None)
        laid = preprocess_bshd_engine(nested, pre_process=True, need_roll=label, forced_max_seqlen=forced)[0]
    else:
        raise ValueError(f"unknown Megatron data_format {data_format!r}")
    if laid.shape[:2] != like.shape[:2]:
        raise RuntimeError(
            f"credit.granularity=logit: the {data_format} layout of the batch fields {tuple(laid.shape[:2])} differs "
            f"from the logits' {tuple(like.shape[:2])} (fp8 padding or context parallelism is not supported)"
        )
    return laid.to(like.device)


def response_values(data: TensorDict, nested: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`to_logits_layout` on verl's nested per-sequence output (B, L_i, ...): (sum R_i, ...)."""
    rows = []
    for row, (length, response) in zip(nested.unbind(0), zip(*_lengths(data), strict=True), strict=True):
        rows.append(row[length - response - 1 : length - 1])
    return torch.cat(rows)


class MegatronTopkRecorder(TopkRecorder):
    """The Megatron form of :class:`~credit_plugin.logit_engines.TopkRecorder` (same arguments, same
    :meth:`rows`): log-probs normalised over the full vocabulary from this rank's shard, the top-k across shards.

    ``transform`` gets the micro-batch and the logits shard and returns a shard (the trust-region teacher's mix
    of the actor's and the frozen model's shards).
    """

    def __call__(
        self,
        *,
        data: TensorDict,
        student_logits: torch.Tensor | None = None,
        model_output: dict | None = None,
        data_format: str = "thd",
        **_: Any,
    ):
        if student_logits is not None:
            return self.per_position(data, student_logits, data_format)
        if model_output is not None and _IDS in model_output:
            lengths = data["responses"].offsets().diff()
            values = [response_values(data, model_output[key]).cpu() for key in (_IDS, _TOPK, _LABEL)]
            self.records.append((data[ROW].cpu(), lengths.cpu(), *values))
        return torch.zeros((), device=data["input_ids"].device), {}

    def per_position(self, data: TensorDict, student_logits: torch.Tensor, data_format: str) -> dict:
        """Per position of the layout: ``k`` ids, their log-probs and the sampled token's log-prob."""
        with torch.no_grad():
            logits = student_logits if self.transform is None else self.transform(data, student_logits)
            shard = logits.float()
            collectives = TensorParallelCollectives()
            start = collectives.shard_start(shard.shape[-1])
            k = min(self.topk, shard.shape[-1] * collectives.size)
            shifted, log_norm = shard_normalizer(shard, collectives)
            labels = to_logits_layout(data, data["input_ids"], data_format, shard, label=True)
            label_lp = shard_gather(shifted, labels[..., None].long(), start, collectives)[..., 0] - log_norm
            if self.ids_field is not None:
                given = data[self.ids_field].values().reshape(-1, k).long()
                ids = to_logits_layout(data, given, data_format, shard)
            else:
                ids = shard_topk(shifted, k, start, collectives)[1]
            topk_lp = shard_gather(shifted, ids, start, collectives) - log_norm[..., None]
        return {_IDS: ids, _TOPK: topk_lp, _LABEL: label_lp}


class MegatronLogitDistillationLoss(LogitDistillationLoss):
    """The Megatron form of :class:`~credit_plugin.logit_engines.LogitDistillationLoss`: the hook's per-token
    loss from this rank's vocabulary shard (the student's full-vocabulary log-probs at the stored ids via a
    vocab-parallel logsumexp and shard gathers, their gradient flowing back to each rank's own shard); the loss
    call is the FSDP one."""

    def __call__(
        self,
        *,
        data: TensorDict,
        model_output: dict | None = None,
        student_logits: torch.Tensor | None = None,
        dp_group=None,
        data_format: str = "thd",
        **_: Any,
    ):
        if student_logits is not None:
            return self.shard_per_position(data, student_logits, data_format)
        return self.loss(model_output, data, dp_group)

    def shard_per_position(self, data: TensorDict, student_logits: torch.Tensor, data_format: str) -> dict:
        """Per position of the layout (B, S) or (1, N): the loss (with gradient) and diagnostics, 0 off tokens."""
        collectives = TensorParallelCollectives()
        shard = student_logits.float()
        start = collectives.shard_start(shard.shape[-1])
        k = min(self.topk, shard.shape[-1] * collectives.size)

        def laid(name: str, width: int | None = None) -> torch.Tensor:
            values = data[name].values()
            return to_logits_layout(data, values if width is None else values.reshape(-1, width), data_format, shard)

        ids, target = laid(TOPK_IDS, k).long(), laid(TARGET_TOPK, k).float()
        mask = (laid(DISTILL_MASK) > 0) & (laid("response_mask") > 0)
        old_log_prob = laid("old_log_probs").float()
        # the student's full-vocabulary log-probs at the ids, from this shard: the gradient reaches its own shard
        shifted, log_norm = shard_normalizer(shard, collectives)
        student_topk = shard_gather(shifted, ids, start, collectives) - log_norm[..., None]
        with torch.no_grad():
            labels = to_logits_layout(data, data["input_ids"], data_format, shard, label=True)
            sampled = shard_gather(shifted.detach(), labels[..., None].long(), start, collectives)[..., 0]
            log_prob = sampled - log_norm.detach()
        per_token = distill.per_token_topk_loss(
            student_topk,
            target,
            mask,
            add_tail=self.add_tail,
            alpha=self.alpha,
            is_clip=self.is_clip,
            log_prob=log_prob,
            old_log_prob=old_log_prob,
        )
        with torch.no_grad():
            target_clamped = distill.tail_clamp_active(target)
            student_clamped = distill.tail_clamp_active(student_topk.detach())
            clamped = (target_clamped | student_clamped) if self.add_tail else torch.zeros_like(target_clamped)
            on = mask.float()
            # support movement, as on FSDP: the current student's own top-k across the shards against the stored ids
            current = shard_topk(shifted.detach(), k, start, collectives)[1]
            overlap = distill.support_overlap(current, ids)
            support_mass = torch.logsumexp(student_topk.detach(), dim=-1).exp()
        return {
            "credit_distill_loss": per_token.float(),
            "credit_target_mass": torch.logsumexp(target, dim=-1).exp() * on,
            "credit_tail_clamped": clamped.float() * on,
            "credit_support_overlap": overlap.float() * on,
            "credit_support_mass": support_mass.float() * on,
            "credit_distill_token": on,
        }
