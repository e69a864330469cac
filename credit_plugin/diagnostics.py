"""Per-step signals that show a distillation run collapsing before its reward does (torch only).

The failure this watches for (``docs/method.md``): token advantages that are not centred, e.g. CREDIT's
``logprob`` form at lambda = 1 pays ``-log pi_theta`` on every prompt-agnostic token. Their policy gradient is
then an entropy bonus: entropy and response length rise, and the reward falls a few steps later.
"""

from __future__ import annotations

import torch

# A mean token advantage beyond this many nats for this many steps in a row gets a warning line.
DRIFT_NATS = 1.0
DRIFT_STEPS = 3


@torch.no_grad()
def token_advantage_stats(advantages: torch.Tensor, mask: torch.Tensor, prefix: str = "credit/advantage") -> dict:
    """Mean, positive fraction and mean absolute value of the advantages over scored tokens.

    Args:
        advantages: shape (bs, response_length).
        mask: shape (bs, response_length), 1 on tokens that carry a distillation signal.

    Returns:
        ``{prefix/token_mean, prefix/positive_fraction, prefix/token_abs_mean}``; empty if no token is scored.
    """
    on = mask.bool()
    if not on.any():
        return {}
    values = advantages[on].float()
    return {
        f"{prefix}/token_mean": values.mean().item(),
        f"{prefix}/positive_fraction": (values > 0).float().mean().item(),
        f"{prefix}/token_abs_mean": values.abs().mean().item(),
    }


class AdvantageDriftWatch:
    """Counts consecutive steps whose mean token advantage is beyond ``nats``; says so once it reaches ``steps``."""

    def __init__(self, nats: float = DRIFT_NATS, steps: int = DRIFT_STEPS):
        self.nats, self.steps, self.streak = nats, steps, 0

    def update(self, token_mean: float | None, step: int) -> str | None:
        """Record one step; returns the warning text while the drift lasts ``steps`` or more steps, else None."""
        if token_mean is None or abs(token_mean) <= self.nats:
            self.streak = 0
            return None
        self.streak += 1
        if self.streak < self.steps:
            return None
        return (
            f"credit: the mean token advantage has been {token_mean:+.2f} nats (beyond +-{self.nats}) for "
            f"{self.streak} steps up to step {step}; uncentred advantages act as an entropy bonus and tend to "
            f"collapse the policy (watch actor/entropy and response_length/mean). Lower credit.contrast_coef, "
            f"use credit.contrast_form=reward, or set credit.contrast_centering=batch."
        )


@torch.no_grad()
def generic_credit_stats(
    teacher_log_probs: torch.Tensor,
    baseline: torch.Tensor,
    student_log_probs: torch.Tensor,
    credit_rewards: torch.Tensor,
    mask: torch.Tensor,
    prefix: str = "credit",
) -> dict:
    """How much of SDPO's credit any prompt would earn, and how far CREDIT moves it.

    With ``T`` the teacher's log-prob of the sampled token (the sample's own prompt and feedback), ``g`` the
    contrastive baseline (the same teacher with other groups' prompts) and ``S`` the student's:

    - ``generic_share = sum_t |T - S| * min(1, exp(g - T)) / sum_t |T - S|`` over scored tokens: the share of the
      teacher's probability on each token that survives swapping the prompt (capped at 1), weighted by how much
      credit SDPO puts there. 1 when every credited token is as likely under other prompts (all of SDPO's credit
      input-generic), near 0 when the credited tokens are likely only under the sample's own prompt. Bounded in
      [0, 1]: a token the swapped teacher finds far less likely counts as input-specific however unlikely, instead
      of dominating a regression slope.
    - ``advantage_correlation``: Pearson correlation of CREDIT's and SDPO's token rewards over scored tokens;
      1 means the contrast rescaled SDPO's credit without reordering it.

    Args:
        teacher_log_probs: shape (B, T), ``T = log pi_ref(y_t | x_i, z_i)``.
        baseline: shape (B, T), ``g``, aggregated over the K negatives.
        student_log_probs: shape (B, T), ``S = log pi_theta(y_t | x_i)``.
        credit_rewards: shape (B, T), CREDIT's token rewards of the run's form and lambda.
        mask: shape (B, T), 1 on tokens with a distillation signal.

    Returns:
        ``{prefix/generic_share, prefix/advantage_correlation}``; a statistic whose denominator is zero
        (no scored token, SDPO's reward 0 everywhere, a constant reward) is left out rather than reported as NaN.
    """
    on = mask.bool()
    if not on.any():
        return {}
    teacher = teacher_log_probs[on].double()
    sdpo = teacher - student_log_probs[on].double()
    kept = torch.exp(torch.clamp(baseline[on].double() - teacher, max=0.0))
    credit = credit_rewards[on].double()
    stats = {}
    weight = sdpo.abs()
    if weight.sum() > 0:
        stats[f"{prefix}/generic_share"] = float((weight * kept).sum() / weight.sum())
    centred_sdpo, centred_credit = sdpo - sdpo.mean(), credit - credit.mean()
    norm = centred_sdpo.norm() * centred_credit.norm()
    if norm > 0:
        stats[f"{prefix}/advantage_correlation"] = float((centred_sdpo * centred_credit).sum() / norm)
    return stats
