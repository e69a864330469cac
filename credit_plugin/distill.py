"""Logit-level self-distillation (``granularity: logit``): SDPO's top-k KL/JSD loss, our own implementation.

Notation: ``B`` responses, ``T`` response tokens, ``V`` vocabulary, ``k`` distilled token ids. ``S`` is the
student ``pi_theta(. | x, y_<t)``, ``T`` the teacher ``pi_ref(. | reprompt(x, z), y_<t)``. The teacher is
always detached (stop-gradient). Logits are expected already divided by the rollout temperature, as verl
does before computing log-probs.

Per response token the loss compares two distributions over a *bucketed* support:

1. ``topk=None``: the full vocabulary.
2. ``topk=k`` with a tail bucket (SDPO's default): the ``k`` selected ids plus one bucket holding the rest of
   the mass, ``log(1 - sum_i p_i)``, so each bucketed distribution still sums to 1. Bucketing is a
   coarse-graining, so every divergence here is at most its full-vocabulary value (data processing).
3. ``topk=k`` without tail: both distributions restricted to the ``k`` ids and renormalised.

The ``k`` ids are the student's top-k by default, as in SDPO (lasgroup/SDPO ``dp_actor.py`` takes
``torch.topk`` of the student's logits and gathers the teacher's at those ids); ``topk_source="teacher"``
selects by the teacher instead (what a teacher pass that stores its own top-k produces, as in verl's own
``distillation`` losses). Precomputed teacher top-k log-probs with their ids are accepted too.

The divergence is SDPO's generalised Jensen-Shannon family (that of GKD, Agarwal et al. 2024):
``alpha=0`` forward ``KL(T || S)``, ``alpha=1`` reverse ``KL(S || T)``, and for ``0 < alpha < 1``
``alpha * KL(T || M) + (1 - alpha) * KL(S || M)`` with ``M = alpha * T + (1 - alpha) * S``.
"""

from __future__ import annotations

import math

import torch

TOPK_SOURCES = ("student", "teacher")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean")
_MAX_LOG_RATIO = 20.0  # keeps exp() of the importance log-ratio finite, as SDPO does


def _compute_dtype(tensor: torch.Tensor) -> torch.Tensor:
    # softmax statistics in half precision lose the small tail masses the tail bucket is about
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _rows(bad: torch.Tensor) -> list[int]:
    return torch.nonzero(bad.reshape(bad.shape[0], -1).any(dim=1)).flatten().tolist()[:8]


def _finite_scores(name: str, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Check ``scores`` (B, T, n) is finite at unmasked positions; zero masked positions that are not.

    Masked garbage would otherwise turn into NaN gradients through the masking ``where``.
    The full-size copy is made only in that rare case.
    """
    with torch.no_grad():
        finite = torch.isfinite(scores.amin(dim=-1)) & torch.isfinite(torch.logsumexp(scores, dim=-1))
    if (~finite & mask).any():
        raise ValueError(f"{name} has NaN/inf values at unmasked positions of samples {_rows(~finite & mask)}")
    if not finite.all():
        scores = scores.masked_fill(~finite[..., None], 0.0)
    return scores


def _finite_values(name: str, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Same as :func:`_finite_scores`, elementwise, for ``values`` of the shape of ``mask`` (B, ...)."""
    finite = torch.isfinite(values)
    if (~finite & mask).any():
        raise ValueError(f"{name} has NaN/inf values at unmasked positions of samples {_rows(~finite & mask)}")
    return values if finite.all() else values.masked_fill(~finite, 0.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate at both ends (Maechler 2012)."""
    near_zero = x > -math.log(2.0)
    return torch.where(near_zero, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def add_tail_bucket(topk_log_probs: torch.Tensor) -> torch.Tensor:
    """Append the log-mass of all ids outside the top-k.

    Args:
        topk_log_probs: shape (..., k). Log-probs normalised over the full vocabulary.

    Returns:
        shape (..., k + 1); the last entry is ``log(1 - sum_i exp(topk_log_probs_i))``. That mass is floored at
        the dtype's machine epsilon: with ``k = V`` (or rounding) it would be ``log 0`` and ``0 * log 0`` terms
        would make gradients NaN. The bucketed distribution sums to 1 within that epsilon.
    """
    eps = torch.finfo(topk_log_probs.dtype).eps
    topk_mass = torch.logsumexp(topk_log_probs, dim=-1, keepdim=True).clamp(max=-eps)
    return torch.cat([topk_log_probs, log1mexp(topk_mass)], dim=-1)


def renormalize(topk_log_probs: torch.Tensor) -> torch.Tensor:
    """Restrict to the given ids: shape (..., k) -> (..., k), each row a distribution over the k ids."""
    return topk_log_probs - torch.logsumexp(topk_log_probs, dim=-1, keepdim=True)


def bucketed_log_probs(
    student_logits: torch.Tensor,
    teacher: torch.Tensor,
    response_mask: torch.Tensor | None = None,
    topk: int | None = 100,
    add_tail: bool = True,
    topk_source: str = "student",
    topk_indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probs on a common bucketed support (see the module docstring).

    Args:
        student_logits: shape (B, T, V). Logits or log-probs of the student (normalised here).
        teacher: shape (B, T, V) teacher logits or log-probs; or, with ``topk_indices``, shape (B, T, k)
            teacher log-probs *normalised over the full vocabulary* at those ids. Detached here.
        response_mask: shape (B, T). Positions where inputs must be finite; ``None`` means all.
        topk: number of ids kept (clamped to ``V``, as SDPO does), or ``None`` for the full vocabulary.
        add_tail: append the tail bucket (True) or renormalise over the top-k (False).
        topk_source: ``student`` (SDPO) or ``teacher``: whose top-k ids are kept. Unused with ``topk_indices``.
        topk_indices: shape (B, T, k), int64. Ids at which ``teacher`` was taken; then ``topk`` must be ``k``.

    Returns:
        ``(student_log_probs, teacher_log_probs)``, each of shape (B, T, n) with ``n`` = ``V``, ``k + 1`` (tail)
        or ``k``. Only the student's carries gradient.
    """
    _check_inputs(student_logits, teacher, response_mask, topk, topk_source, topk_indices)
    mask = torch.ones(student_logits.shape[:2], dtype=torch.bool, device=student_logits.device)
    if response_mask is not None:
        mask = response_mask.bool()
    student_logits = _finite_scores("student_logits", _compute_dtype(student_logits), mask)
    teacher = teacher.detach().to(student_logits.dtype)
    student_log_norm = torch.logsumexp(student_logits, dim=-1, keepdim=True)

    if topk_indices is not None:
        teacher = _finite_values("teacher top-k log-probs", teacher, mask[..., None])
        teacher_mass = torch.logsumexp(teacher, dim=-1)
        # more than 1 + rounding: these are logits or otherwise not normalised over the vocabulary
        if ((teacher_mass > 1e-3) & mask).any():
            raise ValueError(
                "teacher top-k log-probs sum to more than 1 in probability at samples "
                f"{_rows((teacher_mass > 1e-3) & mask)}; pass log-probs normalised over the full vocabulary"
            )
        index = topk_indices
        teacher_topk = teacher
    else:
        teacher = _finite_scores("teacher logits", teacher, mask)
        teacher_log_norm = torch.logsumexp(teacher, dim=-1, keepdim=True)
        if topk is None:
            return student_logits - student_log_norm, teacher - teacher_log_norm
        k = min(topk, student_logits.shape[-1])
        selector = student_logits.detach() if topk_source == "student" else teacher
        index = torch.topk(selector, k, dim=-1).indices
        # gather before normalising: no (B, T, V) log-prob tensor in the top-k path
        teacher_topk = teacher.gather(-1, index) - teacher_log_norm

    student_topk = student_logits.gather(-1, index) - student_log_norm
    if add_tail:
        return add_tail_bucket(student_topk), add_tail_bucket(teacher_topk)
    return renormalize(student_topk), renormalize(teacher_topk)


def _kl(p_log_probs: torch.Tensor, q_log_probs: torch.Tensor) -> torch.Tensor:
    return (p_log_probs.exp() * (p_log_probs - q_log_probs)).sum(dim=-1)


def generalized_jsd(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """SDPO's divergence family between student ``S`` and teacher ``T`` over the last dimension.

    - ``alpha = 0``: forward ``KL(T || S)``; ``alpha = 1``: reverse ``KL(S || T)``.
    - ``0 < alpha < 1``: ``alpha * KL(T || M) + (1 - alpha) * KL(S || M)``, ``M = alpha * T + (1 - alpha) * S``
      (SDPO's convention, taken from GKD: ``alpha`` weighs the teacher both in ``M`` and in the sum). This is
      ``H(M) - alpha * H(T) - (1 - alpha) * H(S)``, at most the binary entropy of ``alpha`` (``ln 2`` at 0.5).
      It tends to 0, not to a KL, as ``alpha`` nears 0 or 1: the endpoints are separate cases, as in SDPO.

    Args:
        student_log_probs: shape (..., n), normalised over n.
        teacher_log_probs: shape (..., n), normalised over n; treated as a constant.
        alpha: in [0, 1].

    Returns:
        shape (...).
    """
    _check_alpha(alpha)
    teacher_log_probs = teacher_log_probs.detach()
    if alpha == 0.0:
        return _kl(teacher_log_probs, student_log_probs)
    if alpha == 1.0:
        return _kl(student_log_probs, teacher_log_probs)
    mixture = torch.logaddexp(teacher_log_probs + math.log(alpha), student_log_probs + math.log1p(-alpha))
    return alpha * _kl(teacher_log_probs, mixture) + (1.0 - alpha) * _kl(student_log_probs, mixture)


def importance_weights(log_prob: torch.Tensor, old_log_prob: torch.Tensor, is_clip: float | None) -> torch.Tensor:
    """Clipped ratio ``min(pi_theta(y_t) / pi_old(y_t), is_clip)`` of the sampled token, without gradient.

    As in SDPO the ratio is clipped from above only, its log first bounded to [-20, 20].

    Args:
        log_prob: shape (B, T). Current policy log-prob of the sampled token.
        old_log_prob: shape (B, T). Log-prob under the policy that generated the batch.
        is_clip: upper clip (> 0), or ``None`` for weights of 1.

    Returns:
        shape (B, T), detached.
    """
    if is_clip is None:
        return torch.ones_like(log_prob)
    if not is_clip > 0:
        raise ValueError(f"is_clip must be positive or None, got {is_clip}")
    log_ratio = (log_prob - old_log_prob).detach().clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return log_ratio.exp().clamp(max=is_clip)


def per_token_distillation_loss(
    student_logits: torch.Tensor,
    teacher: torch.Tensor,
    response_mask: torch.Tensor,
    topk: int | None = 100,
    add_tail: bool = True,
    alpha: float = 0.5,
    is_clip: float | None = 2.0,
    log_prob: torch.Tensor | None = None,
    old_log_prob: torch.Tensor | None = None,
    topk_source: str = "student",
    topk_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """``is_weight[b, t] * D_alpha(S[b, t] || T[b, t])`` on the bucketed support, zero where masked.

    Args:
        student_logits, teacher, topk, add_tail, topk_source, topk_indices: see :func:`bucketed_log_probs`.
        response_mask: shape (B, T). 1 on tokens to distil. Fold SDPO's per-sample ``self_distillation_mask``
            (samples without teacher context) in here.
        alpha: divergence, see :func:`generalized_jsd`.
        is_clip, log_prob, old_log_prob: importance weight, see :func:`importance_weights`; the two
            log-probs, shape (B, T), are required unless ``is_clip`` is None.

    Returns:
        shape (B, T).
    """
    _check_alpha(alpha)
    student_log_probs, teacher_log_probs = bucketed_log_probs(
        student_logits, teacher, response_mask, topk, add_tail, topk_source, topk_indices
    )
    return _weighted_divergence(
        student_log_probs, teacher_log_probs, response_mask, alpha, is_clip, log_prob, old_log_prob
    )


def per_token_topk_loss(
    student_topk: torch.Tensor,
    teacher_topk: torch.Tensor,
    response_mask: torch.Tensor,
    add_tail: bool = True,
    alpha: float = 0.5,
    is_clip: float | None = 2.0,
    log_prob: torch.Tensor | None = None,
    old_log_prob: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`per_token_distillation_loss` at given ids from the student's top-k log-probs rather than its logits.

    For callers that never hold a position's full logits (vocabulary shards under tensor parallelism,
    ``credit_plugin.vocab_shards``): with ``student_topk = log_softmax(student_logits).gather(-1, ids)`` it is
    ``per_token_distillation_loss(student_logits, teacher_topk, ..., topk_indices=ids)``.

    Args:
        student_topk: shape (B, T, k), the student's log-probs normalised over the full vocabulary at the ids;
            carries the gradient.
        teacher_topk: shape (B, T, k), the target's log-probs at the same ids (full-vocabulary normalised).
        response_mask, add_tail, alpha, is_clip, log_prob, old_log_prob: see :func:`per_token_distillation_loss`.

    Returns:
        shape (B, T).
    """
    _check_alpha(alpha)
    mask = response_mask.bool()
    student_topk = _finite_values("student top-k log-probs", _compute_dtype(student_topk), mask[..., None])
    teacher_topk = _finite_values(
        "teacher top-k log-probs", teacher_topk.detach().to(student_topk.dtype), mask[..., None]
    )
    bucket = add_tail_bucket if add_tail else renormalize
    return _weighted_divergence(
        bucket(student_topk), bucket(teacher_topk), response_mask, alpha, is_clip, log_prob, old_log_prob
    )


def _weighted_divergence(
    student_log_probs: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    alpha: float,
    is_clip: float | None,
    log_prob: torch.Tensor | None,
    old_log_prob: torch.Tensor | None,
) -> torch.Tensor:
    """``is_weight * D_alpha(S || T)`` on bucketed log-probs (B, T, n), zero where ``response_mask`` (B, T) is 0."""
    mask = response_mask.bool()
    loss = generalized_jsd(student_log_probs, teacher_log_probs, alpha)
    if is_clip is not None:
        if log_prob is None or old_log_prob is None:
            raise ValueError("is_clip is set, so log_prob and old_log_prob (shape (B, T)) are required")
        for name, value in (("log_prob", log_prob), ("old_log_prob", old_log_prob)):
            if value.shape != response_mask.shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(response_mask.shape)}")
        log_prob = _finite_values("log_prob", log_prob, mask)
        old_log_prob = _finite_values("old_log_prob", old_log_prob, mask)
        loss = loss * importance_weights(log_prob, old_log_prob, is_clip)
    return torch.where(mask, loss, torch.zeros_like(loss))


def aggregate_loss(
    loss_mat: torch.Tensor,
    loss_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    dp_size: int = 1,
    batch_num_tokens: int | torch.Tensor | None = None,
    global_batch_size: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """verl's ``agg_loss`` for the two modes used here (``token-mean``, ``seq-mean-token-mean``).

    Args:
        loss_mat: shape (B, T). loss_mask: shape (B, T).
        dp_size, batch_num_tokens, global_batch_size: verl's global normalisers (tokens / non-empty
            sequences in the global mini-batch); when ``None`` the local counts are used.

    Returns:
        scalar. Unlike verl, a micro-batch with no unmasked token gives 0, not NaN, when counts are local
        (as SDPO does by clamping the count at 1): a batch where no sample got teacher context is a no-op.
    """
    mask = loss_mask.to(loss_mat.dtype)
    if loss_agg_mode == "token-mean":
        count = mask.sum().clamp(min=1.0) if batch_num_tokens is None else batch_num_tokens
        return (loss_mat * mask).sum() / count * dp_size
    if loss_agg_mode == "seq-mean-token-mean":
        tokens = mask.sum(dim=-1)
        seq_losses = (loss_mat * mask).sum(dim=-1) / tokens.clamp(min=1.0)
        count = (tokens > 0).sum().clamp(min=1) if global_batch_size is None else global_batch_size
        return seq_losses.sum() / count * dp_size
    raise ValueError(f"loss_agg_mode must be one of {LOSS_AGG_MODES}, got {loss_agg_mode!r}")


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def _check_inputs(
    student_logits: torch.Tensor,
    teacher: torch.Tensor,
    response_mask: torch.Tensor | None,
    topk: int | None,
    topk_source: str,
    topk_indices: torch.Tensor | None,
) -> None:
    if student_logits.dim() != 3:
        raise ValueError(f"student_logits must have shape (B, T, V), got {tuple(student_logits.shape)}")
    batch_shape, vocab = tuple(student_logits.shape[:2]), student_logits.shape[-1]
    if response_mask is not None and tuple(response_mask.shape) != batch_shape:
        raise ValueError(f"response_mask has shape {tuple(response_mask.shape)}, expected {batch_shape}")
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk < 1):
        raise ValueError(f"topk must be a positive integer or None, got {topk!r}")
    if topk_source not in TOPK_SOURCES:
        raise ValueError(f"topk_source must be one of {TOPK_SOURCES}, got {topk_source!r}")
    if topk_indices is None:
        if teacher.shape != student_logits.shape:
            raise ValueError(
                f"teacher logits have shape {tuple(teacher.shape)}, expected {tuple(student_logits.shape)} "
                "(student_logits); pass topk_indices with teacher top-k log-probs"
            )
        return
    k = topk_indices.shape[-1]
    if topk_indices.dim() != 3 or tuple(topk_indices.shape[:2]) != batch_shape or teacher.shape != topk_indices.shape:
        raise ValueError(
            f"teacher top-k log-probs {tuple(teacher.shape)} and topk_indices {tuple(topk_indices.shape)} "
            f"must both have shape {batch_shape + (k,)}"
        )
    if topk is None or min(topk, vocab) != k:
        raise ValueError(f"topk={topk} does not match the {k} ids in topk_indices")
    if topk_indices.dtype != torch.int64 or int(topk_indices.min()) < 0 or int(topk_indices.max()) >= vocab:
        raise ValueError(f"topk_indices must be int64 ids in [0, {vocab})")


CONTRAST_FORMS_AT_LOGIT = ("reward", "logprob")
_AGGREGATES = ("mean", "logmeanexp")


def bucket(topk_log_probs: torch.Tensor, add_tail: bool) -> torch.Tensor:
    """The bucketed distribution of top-k log-probs (..., k): with the tail (..., k + 1), else renormalised (..., k)."""
    return add_tail_bucket(topk_log_probs) if add_tail else renormalize(topk_log_probs)


def tail_clamp_active(topk_log_probs: torch.Tensor) -> torch.Tensor:
    """Where :func:`add_tail_bucket` floors the tail mass: the top-k mass is within machine epsilon of 1.

    Args:
        topk_log_probs: shape (..., k), log-probs normalised over the full vocabulary.

    Returns:
        shape (...), bool. There the tail bucket holds ``eps`` instead of its true (smaller) mass, so the loss
        differs (slightly) from the divergence of the true bucketed distributions.
    """
    eps = torch.finfo(topk_log_probs.dtype).eps
    return torch.logsumexp(topk_log_probs, dim=-1) > -eps


@torch.no_grad()
def support_overlap(current_ids: torch.Tensor, support_ids: torch.Tensor) -> torch.Tensor:
    """Fraction of the current top-k ids that lie in the stored support, per token.

    At ``granularity: logit`` the support is ``pi_old``'s top-k, recorded before the step's first update; SDPO
    re-selects the current student's top-k in every update. This measures how far the two have moved apart.

    Args:
        current_ids: shape (..., k), int64. The current student's top-k ids.
        support_ids: shape (..., k'), int64. The stored support's ids (each row without repeats).

    Returns:
        shape (...), float32 in [0, 1]: ``|current ∩ support| / k``; 1 where the supports are the same set.
    """
    if current_ids.shape[:-1] != support_ids.shape[:-1]:
        raise ValueError(
            f"current_ids {tuple(current_ids.shape)} and support_ids {tuple(support_ids.shape)} "
            "must agree on every dimension but the last"
        )
    batch = current_ids.shape[:-1]
    current = current_ids.reshape(-1, current_ids.shape[-1])
    support = support_ids.reshape(-1, support_ids.shape[-1]).sort(dim=-1).values
    # membership by binary search in each sorted row: O(k log k) per token, no (k, k) or (V,) tensor per token
    at = torch.searchsorted(support, current).clamp(max=support.shape[-1] - 1)
    found = support.gather(-1, at) == current
    return found.float().mean(dim=-1).reshape(batch)


@torch.no_grad()
def contrastive_topk_target(
    teacher_topk: torch.Tensor,
    contrast_topk: torch.Tensor | None,
    student_topk: torch.Tensor | None,
    contrast_coef: float,
    add_tail: bool = True,
    aggregate: str = "mean",
    form: str = "reward",
) -> torch.Tensor:
    """CREDIT's teacher at logit level (docs/method.md, "CREDIT at logit level"), on the bucketed support.

    With ``T``, ``T'_k``, ``S`` the bucketed (tail or renormalised) distributions of the teacher under the
    reprompt, the teacher under the k-th swapped prompt, and the old student, all at the same ids:
    ``log q(v) = log T(v) - lambda * (agg_k log T'_k(v) - log S(v))`` (form ``reward``) or
    ``log q(v) = log T(v) - lambda * agg_k log T'_k(v)`` (form ``logprob``), renormalised over the buckets.

    Args:
        teacher_topk: shape (B, T, k), teacher log-probs at the ids, normalised over the full vocabulary.
        contrast_topk: shape (B, K, T, k), the same under K swapped prompts; unused when ``contrast_coef == 0``.
        student_topk: shape (B, T, k), the old student's log-probs at the ids; form ``reward`` only.
        contrast_coef: lambda >= 0. At 0 ``teacher_topk`` is returned unchanged (SDPO exactly).
        add_tail: the support's tail bucket (as the loss's ``distillation_add_tail``).
        aggregate: ``mean`` or ``logmeanexp`` over the K negatives, per bucket.
        form: ``reward`` or ``logprob`` (``pmi`` has no logit-level meaning here: refused by the config).

    Returns:
        shape (B, T, k): log q on the k ids, in the form :func:`bucketed_log_probs` takes (``topk_indices``):
        with the tail, ``log(1 - sum exp)`` of it is q's tail bucket; without, it sums to 1 over the ids.
    """
    if contrast_coef < 0:
        raise ValueError(f"contrast_coef (lambda) must be >= 0, got {contrast_coef}")
    if contrast_coef == 0:
        return teacher_topk
    if form not in CONTRAST_FORMS_AT_LOGIT:
        raise ValueError(f"contrast_form must be one of {CONTRAST_FORMS_AT_LOGIT} at logit level, got {form!r}")
    if aggregate not in _AGGREGATES:
        raise ValueError(f"negative_aggregate must be one of {_AGGREGATES}, got {aggregate!r}")
    if contrast_topk is None or contrast_topk.dim() != 4 or contrast_topk.shape[1] == 0:
        raise ValueError("contrast_topk must have shape (B, K, T, k) with K >= 1 when contrast_coef > 0")
    if form == "reward" and student_topk is None:
        raise ValueError("contrast_form=reward at logit level needs the old student's top-k log-probs")
    dtype = torch.promote_types(teacher_topk.dtype, torch.float32)
    teacher = bucket(teacher_topk.to(dtype), add_tail)
    contrast = bucket(contrast_topk.to(dtype), add_tail)
    if aggregate == "mean":
        baseline = contrast.mean(dim=1)
    else:
        baseline = torch.logsumexp(contrast, dim=1) - math.log(contrast.shape[1])
    term = baseline - bucket(student_topk.to(dtype), add_tail) if form == "reward" else baseline
    target = teacher - contrast_coef * term
    target = target - torch.logsumexp(target, dim=-1, keepdim=True)
    k = teacher_topk.shape[-1]
    return target[..., :k]
