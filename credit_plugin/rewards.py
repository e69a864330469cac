"""The token rewards of CREDIT, readable top to bottom.

Notation (see ``docs/method.md``): ``B`` responses, ``T`` response tokens, ``K`` negatives.
All inputs are log-probabilities of the *sampled* response tokens ``y_t``; all rewards are
computed without gradient and are zero where ``response_mask`` is zero.

With ``T = log pi_ref(y_t | x_i, z_i)``, ``S = log pi_theta(y_t | x_i)``, the contrastive baseline
``g = agg_k log pi_ref(y_t | x_{sigma_k(i)}, z_i)`` (same response and feedback, prompts of other groups) and
``S' = agg_k log pi_theta(y_t | x_{sigma_k(i)})``:

- SDPO:   ``r_sdpo = T - S``
- CREDIT, by ``contrast_form`` (all equal SDPO at lambda = 0):

  - ``reward`` (default): ``(T - S) - lambda * (g - S)``, SDPO's reward minus lambda times the same reward
    with the prompt swapped: a token the teacher scores alike under every prompt gets 0 at lambda = 1;
  - ``logprob``: ``T - lambda * g - S``, the baseline as a raw log-prob; on prompt-agnostic tokens at lambda = 1
    it is ``-S``, an entropy bonus (measured to collapse the policy, ``docs/method.md``);
  - ``pmi``: ``(T - S) - lambda * (g - S')``, the full contrastive pMI (needs the student's scores under the
    swapped prompts);
  - ``bounded``: ``(T - S) - lambda * max(g - S, min(T - S, 0))``, the ``reward`` form with its contrast term
    capped from below: a token the swapped prompts make unlikely cannot earn more than SDPO's own reward (for
    lambda <= 1 the contrast only shrinks SDPO's reward, never raises it or turns a debit into a credit), while a
    prompt-ignoring teacher still gives 0 at lambda = 1.
- ``contrast_centering=batch`` subtracts the batch mean of the contrast term over scored tokens, so that it
  moves credit between tokens and responses without shifting every advantage by the same amount.
"""

from __future__ import annotations

import math

import torch

AGGREGATES = ("mean", "logmeanexp")
CONTRAST_FORMS = ("reward", "logprob", "pmi", "bounded")
CENTERINGS = ("none", "batch")


def _check_finite(name: str, values: torch.Tensor, mask: torch.Tensor) -> None:
    """Raise if ``values`` has a NaN/inf where ``mask`` (broadcastable) is set, naming the sample."""
    bad = ~torch.isfinite(values) & mask.bool()
    if bad.any():
        rows = torch.nonzero(bad.reshape(bad.shape[0], -1).any(dim=1)).flatten().tolist()
        raise ValueError(f"{name} has non-finite values at unmasked positions of samples {rows[:8]}")


def _check_same_shape(response_mask: torch.Tensor, **tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        if tensor.shape != response_mask.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, expected {tuple(response_mask.shape)} (response_mask)"
            )


@torch.no_grad()
def sdpo_token_rewards(
    teacher_log_probs: torch.Tensor,
    student_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """SDPO's dense reward ``log pi_ref(y_t | x, z) - log pi_theta(y_t | x)``.

    Args:
        teacher_log_probs: shape (B, T). Teacher log-prob of the sampled token with feedback in context.
        student_log_probs: shape (B, T). Policy log-prob of the same token without feedback.
        response_mask: shape (B, T). 1 on response tokens to score.

    Returns:
        shape (B, T); its sum over t is the pMI ``log pi(y|x,z) - log pi(y|x)``.
    """
    _check_same_shape(response_mask, teacher_log_probs=teacher_log_probs, student_log_probs=student_log_probs)
    _check_finite("teacher_log_probs", teacher_log_probs, response_mask)
    _check_finite("student_log_probs", student_log_probs, response_mask)
    mask = response_mask.bool()
    return torch.where(mask, teacher_log_probs - student_log_probs, torch.zeros_like(teacher_log_probs))


@torch.no_grad()
def contrastive_baseline(
    contrast_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    aggregate: str = "mean",
) -> torch.Tensor:
    """Input-generic baseline: the teacher's score of ``y_t`` under K prompts of other groups.

    Args:
        contrast_log_probs: shape (B, K, T). ``log pi_ref(y_t | x_{sigma_k(i)}, z_i)``: the same response
            and feedback as row i, the prompt swapped for the prompt of another uid.
        response_mask: shape (B, T).
        aggregate: ``mean`` of log-probs (the paper's baseline) or ``logmeanexp``
            (log of the mean probability, a mixture over the other inputs).

    Returns:
        shape (B, T), zero where the mask is zero.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"negative_aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if (
        contrast_log_probs.dim() != 3
        or contrast_log_probs.shape[0] != response_mask.shape[0]
        or (contrast_log_probs.shape[2] != response_mask.shape[1])
    ):
        raise ValueError(
            f"contrast_log_probs must have shape (B, K, T) = ({response_mask.shape[0]}, K, {response_mask.shape[1]}), "
            f"got {tuple(contrast_log_probs.shape)}"
        )
    if contrast_log_probs.shape[1] == 0:
        raise ValueError("contrast_log_probs has K=0 negatives; set contrast_coef=0 for SDPO instead")
    mask = response_mask.bool()
    _check_finite("contrast_log_probs", contrast_log_probs, mask.unsqueeze(1))
    safe = torch.where(mask.unsqueeze(1), contrast_log_probs, torch.zeros_like(contrast_log_probs))
    baseline = _aggregate_negatives(safe, aggregate)
    return torch.where(mask, baseline, torch.zeros_like(baseline))


def _aggregate_negatives(values: torch.Tensor, aggregate: str) -> torch.Tensor:
    """shape (B, K, T) -> (B, T): ``mean`` over k, or ``logmeanexp`` (log of the mean probability)."""
    if aggregate == "mean":
        return values.mean(dim=1)
    return torch.logsumexp(values, dim=1) - math.log(values.shape[1])


@torch.no_grad()
def contrast_term(
    baseline: torch.Tensor,
    student_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    form: str = "reward",
    student_baseline: torch.Tensor | None = None,
    centering: str = "none",
    teacher_log_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """What CREDIT subtracts from the SDPO reward, before the weight lambda.

    Args:
        baseline: shape (B, T), ``g`` from :func:`contrastive_baseline`.
        student_log_probs: shape (B, T), ``S = log pi_theta(y_t | x_i)``.
        response_mask: shape (B, T).
        form: ``reward`` -> ``g - S``; ``logprob`` -> ``g``; ``pmi`` -> ``g - S'``;
            ``bounded`` -> ``max(g - S, min(T - S, 0))``.
        student_baseline: shape (B, T), ``S'`` (aggregated like ``g``); required for ``pmi`` only.
        centering: ``none``, or ``batch`` to subtract the term's mean over all unmasked tokens.
        teacher_log_probs: shape (B, T), ``T = log pi_ref(y_t | x_i, z_i)``; required for ``bounded`` only.

    Returns:
        shape (B, T), zero where the mask is zero.
    """
    if form not in CONTRAST_FORMS:
        raise ValueError(f"contrast_form must be one of {CONTRAST_FORMS}, got {form!r}")
    if centering not in CENTERINGS:
        raise ValueError(f"contrast_centering must be one of {CENTERINGS}, got {centering!r}")
    mask = response_mask.bool()
    if form == "logprob":
        term = baseline
    elif form == "reward":
        term = baseline - student_log_probs
    elif form == "bounded":
        if teacher_log_probs is None:
            raise ValueError("contrast_form='bounded' needs the teacher's log-probs (its floor is min(T - S, 0))")
        _check_same_shape(response_mask, teacher_log_probs=teacher_log_probs)
        # The floor min(T - S, 0): where SDPO pays a credit the term cannot go below 0 (a token the swapped prompts
        # make unlikely keeps SDPO's credit and gains nothing more); where SDPO debits, the term cannot go below
        # that debit (at most lambda of it is cancelled). Where g >= min(T, S) this is the reward form exactly.
        term = torch.maximum(baseline - student_log_probs, (teacher_log_probs - student_log_probs).clamp(max=0.0))
    else:
        if student_baseline is None:
            raise ValueError("contrast_form='pmi' needs the student's log-probs under the swapped prompts")
        _check_same_shape(response_mask, student_contrast_baseline=student_baseline)
        _check_finite("student contrast log-probs", student_baseline, mask)
        term = baseline - student_baseline
    term = torch.where(mask, term, torch.zeros_like(term))
    if centering == "batch" and mask.any():
        term = torch.where(mask, term - term[mask].mean(), term)
    return term


@torch.no_grad()
def credit_token_rewards(
    teacher_log_probs: torch.Tensor,
    contrast_log_probs: torch.Tensor,
    student_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    contrast_coef: float = 1.0,
    aggregate: str = "mean",
    form: str = "reward",
    student_contrast_log_probs: torch.Tensor | None = None,
    centering: str = "none",
) -> torch.Tensor:
    """CREDIT's reward: the SDPO reward minus ``lambda`` times the contrast term of ``form``.

    Args:
        teacher_log_probs: shape (B, T). ``log pi_ref(y_t | x_i, z_i)``.
        contrast_log_probs: shape (B, K, T). ``log pi_ref(y_t | x_{sigma_k(i)}, z_i)``.
        student_log_probs: shape (B, T). ``log pi_theta(y_t | x_i)``.
        response_mask: shape (B, T).
        contrast_coef: lambda >= 0; 0 gives SDPO exactly.
        aggregate: see :func:`contrastive_baseline`.
        form: ``reward`` | ``logprob`` | ``pmi`` | ``bounded``, see :func:`contrast_term`.
        student_contrast_log_probs: shape (B, K, T), ``log pi_theta(y_t | x_{sigma_k(i)})``; ``pmi`` only.
        centering: ``none`` | ``batch``, see :func:`contrast_term`.

    Returns:
        shape (B, T), zero where the mask is zero.
    """
    if contrast_coef < 0:
        raise ValueError(f"contrast_coef (lambda) must be >= 0, got {contrast_coef}")
    rewards = sdpo_token_rewards(teacher_log_probs, student_log_probs, response_mask)
    if contrast_coef == 0:
        return rewards
    baseline = contrastive_baseline(contrast_log_probs, response_mask, aggregate)
    student_baseline = None
    if form == "pmi" and student_contrast_log_probs is not None:
        student_baseline = contrastive_baseline(student_contrast_log_probs, response_mask, aggregate)
    term = contrast_term(
        baseline, student_log_probs, response_mask, form, student_baseline, centering, teacher_log_probs
    )
    return rewards - contrast_coef * term


@torch.no_grad()
def mix_outcome_advantages(
    outcome_advantages: torch.Tensor,
    credit_advantages: torch.Tensor,
    outcome_mix: float,
) -> torch.Tensor:
    """``mix * A_grpo + (1 - mix) * A_credit``, both of shape (B, T)."""
    if not 0.0 <= outcome_mix <= 1.0:
        raise ValueError(f"outcome_mix must be in [0, 1], got {outcome_mix}")
    return outcome_mix * outcome_advantages + (1.0 - outcome_mix) * credit_advantages
