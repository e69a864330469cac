"""``granularity: logit`` inside verl's FSDP engine: the top-k passes and the actor's loss, one micro-batch at a time.

verl's FSDP engine hands a micro-batch's temperature-scaled logits to the loss function when the batch carries
``distillation_use_topk`` (its top-k distillation hook), as shape (1, N, V) over the N packed positions of the
micro-batch's rows (sequence parallelism off). Everything here reads those logits where they are and keeps
only per-response-token values, so the largest tensor is one micro-batch's logits (plus its response rows in
float32):

- :class:`TopkRecorder` (old log-prob pass and teacher pass): per response token, the log-probs normalised over
  the full vocabulary at ``k`` ids (given, or this model's own top-k) and the sampled token's log-prob;
- :class:`LogitDistillationLoss` (actor update): SDPO's per-token loss (``credit_plugin.distill``) against the
  stored target, returned per position through the hook, then aggregated as verl aggregates its losses.

Per-row values of ``k`` entries per response token cross the worker boundary as verl's jagged tensors of one
row per sample with ``R_i * k`` values (:func:`flat_rows`): the layout verl's dispatch, TransferQueue and
micro-batching already handle for response-level fields.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict
from verl.trainer.distillation.losses import (
    DistillationLossSettings,
    get_distillation_loss_fn,
    register_distillation_loss,
)
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.padding import no_padding_2_padding

from credit_plugin import distill

# verl distillation-loss registry name of the plugin's logit-level loss (read by LogitDistillationLoss).
DISTILLATION_LOSS_NAME = "credit_sdpo_topk"
# Batch fields of the logit level (all jagged, one row per sample): the k ids and the target per response
# token (R_i * k values), and the per-token distillation mask (R_i values).
TOPK_IDS, TARGET_TOPK, DISTILL_MASK = "credit_topk_ids", "credit_target_topk", "credit_distill_mask"
STUDENT_TOPK = "credit_student_topk"
ROW = "credit_row"


def flat_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Jagged nested tensor of one row per entry, each flattened: row i of shape (R_i, k) holds R_i * k values."""
    lengths = torch.tensor([row.numel() for row in rows], dtype=torch.long)
    values = torch.cat([row.reshape(-1) for row in rows]) if rows else torch.zeros(0)
    return torch.nested.nested_tensor_from_jagged(
        values,
        offsets=torch.nn.functional.pad(lengths.cumsum(0), (1, 0)),
        min_seqlen=int(lengths.min()) if len(rows) else 0,
        max_seqlen=int(lengths.max()) if len(rows) else 0,
    )


def unflat_rows(nested: torch.Tensor, k: int) -> list[torch.Tensor]:
    """The inverse of :func:`flat_rows`: row i of shape (R_i, k)."""
    return [row.reshape(-1, k) for row in nested.unbind(0)]


def padded_rows(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    """Rows (R_i, ...) right-padded with zeros to shape (B, width, ...)."""
    out = rows[0].new_zeros((len(rows), width, *rows[0].shape[1:]))
    for index, row in enumerate(rows):
        out[index, : row.shape[0]] = row
    return out


def response_positions(data: TensorDict) -> torch.Tensor:
    """Packed position of every response token's logits in a micro-batch: shape (sum_i R_i,), long.

    The logits at packed position ``p`` predict ``input_ids[p + 1]`` (verl's rolled labels), so response token
    ``t`` of a row of ``L`` tokens with ``R`` response tokens, starting at ``s``, is predicted at ``s + L - R - 1 + t``.
    """
    seq = data["input_ids"].offsets().diff()
    resp = data["responses"].offsets().diff().to(seq.device)
    starts = seq.cumsum(0) - seq
    first = torch.repeat_interleave(starts + seq - resp - 1, resp)
    within = torch.arange(int(resp.sum()), device=seq.device) - torch.repeat_interleave(resp.cumsum(0) - resp, resp)
    return first + within


def _response_logits(data: TensorDict, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The response rows of the hook's logits (1, N, V) -> ((sum R, V), positions)."""
    logits = logits.squeeze(0)
    total = int(data["input_ids"].offsets()[-1])
    if logits.shape[0] != total:
        raise ValueError(
            f"credit.granularity=logit got logits for {logits.shape[0]} positions, the micro-batch has {total}: "
            "it needs actor_rollout_ref.actor.ulysses_sequence_parallel_size=1 (and the FSDP engine)"
        )
    positions = response_positions(data).to(logits.device)
    return logits.index_select(0, positions), positions


def _zero_loss(data: TensorDict) -> tuple[torch.Tensor, dict]:
    return torch.zeros((), device=data["input_ids"].device), {}


class TopkRecorder:
    """verl loss function of a forward-only pass that records, per response token, top-k log-probs.

    Called by the engine with each micro-batch's logits (``student_logits``, (1, N, V)): with ``ids_field`` in
    the micro-batch (jagged, ``R_i * k`` ids per row) it gathers at those ids, else at the model's own top-k.
    Log-probs are normalised over the full vocabulary (float32). Then called as the loss: zero.

    Args:
        topk: k.
        ids_field: the micro-batch field holding given ids, or None for the model's own top-k.
        transform: applied to the micro-batch's logits first (the trust-region teacher's mix), or None.
    """

    def __init__(
        self,
        topk: int,
        ids_field: str | None = None,
        transform: Callable[[TensorDict, torch.Tensor], torch.Tensor] | None = None,
    ):
        self.topk, self.ids_field, self.transform = topk, ids_field, transform
        self.records: list[tuple[torch.Tensor, ...]] = []

    def __call__(self, *, data: TensorDict, student_logits: torch.Tensor | None = None, **_: Any):
        if student_logits is None:
            return _zero_loss(data)
        with torch.no_grad():
            logits = student_logits if self.transform is None else self.transform(data, student_logits)
            rows, positions = _response_logits(data, logits)
            rows = rows.float()
            log_norm = torch.logsumexp(rows, dim=-1, keepdim=True)
            labels = data["input_ids"].values().to(rows.device)[positions + 1]
            label_lp = (rows.gather(-1, labels[:, None]) - log_norm).squeeze(-1)
            k = min(self.topk, rows.shape[-1])
            if self.ids_field is not None:
                ids = data[self.ids_field].values().to(rows.device).reshape(-1, k)
            else:
                ids = torch.topk(rows, k, dim=-1).indices
            topk_lp = rows.gather(-1, ids) - log_norm
            lengths = data["responses"].offsets().diff()
            self.records.append((data[ROW].cpu(), lengths.cpu(), ids.cpu(), topk_lp.cpu(), label_lp.cpu()))
        return {}

    def rows(self, num_rows: int) -> dict[str, list[torch.Tensor]]:
        """The records by row of the pass's batch (rows tagged by :data:`ROW`), whatever the micro-batch order:
        ``ids`` and ``topk`` (R_i, k), ``label`` (R_i,)."""
        out: dict[str, list] = {"ids": [None] * num_rows, "topk": [None] * num_rows, "label": [None] * num_rows}
        for row_ids, lengths, ids, topk_lp, label_lp in self.records:
            sizes = lengths.tolist()
            for row, a, b, c in zip(
                row_ids.tolist(), ids.split(sizes), topk_lp.split(sizes), label_lp.split(sizes), strict=True
            ):
                out["ids"][row], out["topk"][row], out["label"][row] = a, b, c
        missing = [row for row, value in enumerate(out["ids"]) if value is None]
        if missing:
            raise RuntimeError(f"the top-k pass recorded no logits for rows {missing[:8]} (fused kernels enabled?)")
        return out


class LogitDistillationLoss:
    """The actor's loss at ``granularity: logit`` (verl FSDP engine loss function).

    As the logits hook: SDPO's per-token loss ``is_weight * D_alpha(S || q)`` of each response token on the
    bucketed support of the stored ids, against the stored target ``q`` (:func:`distill.per_token_distillation_loss`),
    placed at its packed position (zero elsewhere) with the diagnostics. As the loss: that per-token loss,
    masked to samples with a teacher context and aggregated as verl aggregates (``loss_agg_mode`` and its global
    token/sample counts) times ``loss_scale`` (SDPO's average over samples with a context), plus verl's own
    ``ppo_loss`` on the batch, whose advantages are zero at logit level: only its entropy and KL-loss terms act.

    Args:
        ppo_loss: the worker's verl loss (``partial(ppo_loss, config=actor_config)``).
        options: ``topk``, ``add_tail``, ``alpha``, ``is_clip``, ``loss_scale`` (see ``credit.*``).
    """

    def __init__(self, ppo_loss: Callable, options: dict[str, Any]):
        self.ppo_loss, self.config = ppo_loss, ppo_loss.keywords["config"]
        self.topk, self.add_tail = int(options["topk"]), bool(options["add_tail"])
        self.alpha, self.is_clip = float(options["alpha"]), options["is_clip"]
        self.loss_scale = float(options.get("loss_scale", 1.0))
        if self.config.loss_agg_mode not in distill.LOSS_AGG_MODES:
            raise ValueError(
                f"credit.granularity=logit supports actor.loss_agg_mode in {distill.LOSS_AGG_MODES}, "
                f"got {self.config.loss_agg_mode!r}"
            )

    @classmethod
    def from_json(cls, ppo_loss: Callable, options: str) -> LogitDistillationLoss:
        return cls(ppo_loss, json.loads(options))

    def __call__(
        self,
        *,
        data: TensorDict,
        model_output: dict | None = None,
        student_logits: torch.Tensor | None = None,
        dp_group=None,
        **_: Any,
    ):
        if student_logits is not None:
            return self.per_position(data, student_logits)
        return self.loss(model_output, data, dp_group)

    def per_position(self, data: TensorDict, student_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per packed position (1, N): the distillation loss (with gradient) and diagnostics, 0 off response tokens."""
        rows, positions = _response_logits(data, student_logits)
        device = rows.device
        k = min(self.topk, rows.shape[-1])
        ids = data[TOPK_IDS].values().to(device).reshape(-1, k)
        target = data[TARGET_TOPK].values().to(device).reshape(-1, k)
        mask = (data[DISTILL_MASK].values().to(device) > 0) & (data["response_mask"].values().to(device) > 0)
        old_log_prob = data["old_log_probs"].values().to(device).float()
        with torch.no_grad():
            labels = data["input_ids"].values().to(device)[positions + 1]
            scores = rows.float()
            log_prob = (scores.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(scores, dim=-1)).detach()
        per_token = distill.per_token_distillation_loss(
            rows[None],
            target[None],
            mask[None],
            topk=k,
            add_tail=self.add_tail,
            alpha=self.alpha,
            is_clip=self.is_clip,
            log_prob=log_prob[None],
            old_log_prob=old_log_prob[None],
            topk_indices=ids[None],
        )[0]
        total = student_logits.shape[1]

        def placed(values: torch.Tensor) -> torch.Tensor:
            return torch.zeros(total, dtype=values.dtype, device=device).scatter(0, positions, values)[None]

        with torch.no_grad():
            target_clamped = distill.tail_clamp_active(target.float())
            student_topk = scores.gather(-1, ids) - torch.logsumexp(scores, dim=-1, keepdim=True)
            student_clamped = distill.tail_clamp_active(student_topk)
            clamped = (target_clamped | student_clamped) if self.add_tail else torch.zeros_like(target_clamped)
            # support movement: the stored ids are pi_old's top-k; after earlier mini-batches' updates the current
            # student's own top-k (what SDPO would distil over) may differ, and its mass on the stored ids drops
            overlap = distill.support_overlap(torch.topk(scores, k, dim=-1).indices, ids)
            support_mass = torch.logsumexp(student_topk, dim=-1).exp()
        return {
            "credit_distill_loss": placed(per_token.float()),
            "credit_target_mass": placed(torch.logsumexp(target.float(), dim=-1).exp()),
            "credit_tail_clamped": placed(clamped.float()),
            "credit_support_overlap": placed(overlap),
            "credit_support_mass": placed(support_mass.float()),
            "credit_distill_token": placed(mask.float()),
        }

    def loss(self, model_output: dict, data: TensorDict, dp_group) -> tuple[torch.Tensor, dict]:
        losses, metrics = get_distillation_loss_fn(DISTILLATION_LOSS_NAME)(self.config, None, model_output, data)
        response_mask = data["response_mask"]
        response_mask = response_mask.to_padded_tensor(0) if response_mask.is_nested else response_mask
        distill_loss = distill.aggregate_loss(
            losses,
            response_mask,
            self.config.loss_agg_mode,
            dp_size=data["dp_size"],
            batch_num_tokens=data["batch_num_tokens"],
            global_batch_size=data["global_batch_size"],
        )
        distill_loss = distill_loss * self.loss_scale
        policy_loss, policy_metrics = self.ppo_loss(model_output=model_output, data=data, dp_group=dp_group)
        policy_metrics.update(metrics)
        policy_metrics["credit/logit/loss"] = Metric(value=distill_loss.detach(), aggregation=AggregationType.SUM)
        return policy_loss + distill_loss, policy_metrics


@register_distillation_loss(DistillationLossSettings(names=[DISTILLATION_LOSS_NAME], use_topk=True))  # type: ignore[arg-type]
def credit_topk_distillation(config, distillation_config, model_output: dict, data: TensorDict):
    """verl distillation-loss function of ``granularity: logit``: the per-token losses the logits hook computed
    (:meth:`LogitDistillationLoss.per_position`), in the response layout, with their diagnostics.

    Returns:
        (losses of shape (bsz, response_len), zero on tokens without a teacher context; metrics over distilled
        tokens: the mean divergence, the target's top-k mass, the fraction of tokens whose tail clamp is active,
        and the support's movement: ``support_overlap``, the mean fraction of the current student's top-k ids in
        the stored support (1 while the student is ``pi_old``; ``support_overlap_min`` is the smallest
        micro-batch mean of the step, its latest mini-batches), and ``student_support_mass``, the current
        student's probability mass on the stored ids).
    """
    losses = no_padding_2_padding(model_output["credit_distill_loss"], data)
    tokens = no_padding_2_padding(model_output["credit_distill_token"], data) > 0
    metrics: dict[str, Any] = {}
    if tokens.any():
        for name, key in (
            ("divergence", "credit_distill_loss"),
            ("target_topk_mass", "credit_target_mass"),
            ("tail_clamp_fraction", "credit_tail_clamped"),
            ("support_overlap", "credit_support_overlap"),
            ("student_support_mass", "credit_support_mass"),
        ):
            values = losses if key == "credit_distill_loss" else no_padding_2_padding(model_output[key], data)
            metrics[f"credit/logit/{name}"] = Metric(AggregationType.MEAN, values[tokens].detach().float().mean())
        metrics["credit/logit/support_overlap_min"] = Metric(
            AggregationType.MIN, metrics["credit/logit/support_overlap"].values[0]
        )
    return losses, metrics
