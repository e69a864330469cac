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
