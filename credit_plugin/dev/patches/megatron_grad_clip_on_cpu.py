"""Let megatron-core clip host gradients by their total norm on the CPU platform.

Why a patch: megatron-core 0.16.1's ``clip_grad_by_total_norm_fp32`` (``megatron/core/optimizer/clip_grads.py``),
which every optimizer step calls when ``clip_grad > 0`` (verl's ``actor.optim.clip_grad``, 1.0 by default),
asserts ``param.grad.type() == 'torch.cuda.FloatTensor'``, a type string that a host tensor never has. Without
CUDA the wrapper scales the same gradients (``.grad``, or ``.decoupled_grad`` when the optimizer keeps them
there) by ``max_norm / (total_norm + 1e-6)`` when that is below 1, as the original does after its check; with
CUDA the original runs unchanged.

Installed as the name megatron-core's optimizer module calls.
"""

from __future__ import annotations

import functools

import torch
import verl
from megatron.core.optimizer import optimizer
from megatron.core.utils import to_local_if_dtensor

from credit_plugin.dev.patches import require_megatron, require_verl

NAME = "megatron_grad_clip_on_cpu"
# The epsilon megatron-core adds to the total norm before dividing.
NORM_EPS = 1.0e-6


def _clip_on_host(original):
    @functools.wraps(original)
    def clip(parameters, max_norm: float, total_norm: float, use_decoupled_grad: bool = False) -> None:
        if torch.cuda.is_available():
            return original(parameters, max_norm, total_norm, use_decoupled_grad)
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        field = "decoupled_grad" if use_decoupled_grad else "grad"
        present = [getattr(param, field, None) for param in parameters]
        grads = [to_local_if_dtensor(grad).detach() for grad in present if grad is not None]
        coeff = max_norm / (total_norm + NORM_EPS)
        if grads and coeff < 1.0:
            torch._foreach_mul_(grads, coeff)
        return None

    clip.credit_patch = NAME
    return clip


def apply() -> None:
    """Install the wrapper once; raises on versions the patch was not written for."""
    require_verl(NAME, verl.__version__)
    require_megatron(NAME, "megatron-core")
    if getattr(optimizer.clip_grad_by_total_norm_fp32, "credit_patch", None) != NAME:
        optimizer.clip_grad_by_total_norm_fp32 = _clip_on_host(optimizer.clip_grad_by_total_norm_fp32)
