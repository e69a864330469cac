"""The ``trust_region`` teacher: a logit mix of the frozen and the current model.

``log pi_tr(y_t | c) = log_softmax((1 - tau) * z_frozen(c) + tau * z_current(c))[y_t]``: with ``tau = 0`` it
is the frozen teacher, with ``tau = 1`` the current one. Unlike the ``ema`` teacher it keeps no third set of
weights, and unlike a mix of probabilities it never leaves the models' own logit space (SDPO's
``teacher_regularization: trust-region``).

The mix needs both models' logits at the same positions, so it is computed where the logits are, one
micro-batch at a time (``credit_plugin.trust_region_engines``); this module holds the math only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Token rows per chunk of the fp32 mix: bounds the extra memory to about ``2 * chunk * vocab * 4`` bytes
# (about 1.2 GB for a 150k vocabulary), small next to the two models' logits of a micro-batch.
DEFAULT_CHUNK_TOKENS = 1024


def label_log_probs(logits: torch.Tensor, labels: torch.LongTensor) -> torch.Tensor:
    """``log_softmax(logits)[labels]`` of logits (N, V) and labels (N,): shape (N,)."""
    return logits.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def trust_region_log_probs(
    frozen_logits: torch.Tensor,
    current_logits: torch.Tensor,
    labels: torch.LongTensor,
    coef: float,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    log_probs_of: Callable[[torch.Tensor, torch.LongTensor], torch.Tensor] = label_log_probs,
) -> torch.Tensor:
    """Label log-probs under the logit mix ``(1 - coef) * frozen_logits + coef * current_logits``.

    Args:
        frozen_logits: shape (N, V), the frozen model's logits (already temperature-scaled).
        current_logits: shape (N, V), the current model's logits at the same N positions.
        labels: shape (N,), the token whose log-prob is taken at each position.
        coef: the mix coefficient ``tau`` in [0, 1].
        chunk_tokens: positions mixed at a time, in float32.
        log_probs_of: label log-probs of mixed logits (n, V) and labels (n,). With a tensor-parallel rank's
            vocabulary shard as V, pass Megatron's vocab-parallel one: the lerp is elementwise, so each rank
            mixes its own shard and only the log-softmax's max and sum cross ranks (every rank must then
            call with the same N).

    Returns:
        Tensor of shape (N,), float32.
    """
    if frozen_logits.shape != current_logits.shape:
        raise ValueError(
            f"trust-region teacher: frozen logits {tuple(frozen_logits.shape)} and current logits "
            f"{tuple(current_logits.shape)} differ (do the actor and ref engines share their parallel layout?)"
        )
    if frozen_logits.dim() != 2 or labels.shape != frozen_logits.shape[:1]:
        raise ValueError(
            f"trust-region teacher expects logits (N, V) and labels (N,), got {tuple(frozen_logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if not 0.0 <= coef <= 1.0:
        raise ValueError(f"credit.teacher_update_rate (the trust-region mix) must lie in [0, 1], got {coef}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    out = torch.empty(labels.shape, dtype=torch.float32, device=frozen_logits.device)
    for start in range(0, labels.numel(), chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        mixed = torch.lerp(frozen_logits[rows].float(), current_logits[rows].float(), coef)
        out[rows] = log_probs_of(mixed, labels[rows])
    return out
