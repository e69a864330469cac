"""Give megatron-core's local attention the mask it expects for verl's padded (bshd) batches on the CPU platform.

Why a patch: without packed sequences (megatron-core's local ``DotProductAttention`` refuses them, so the CPU
path runs ``use_remove_padding=False``), verl 0.9.1 passes the padding mask of ``preprocess_bshd_engine``,
shape [b, s] with True on real tokens, as the model's ``attention_mask``. Transformer Engine's attention ignores
it for causal layers; the local ``DotProductAttention`` (``megatron/core/transformer/dot_product_attention.py``)
``masked_fill``s its [b, heads, s, s] scores with it, True meaning *masked*, and fails on the shape. The wrapper
installed as its ``forward`` turns a [b, s] boolean mask into the [b, 1, s, s] mask that hides future positions
and padded keys; any other mask goes through unchanged.
"""

from __future__ import annotations

import functools

import torch
import verl

from credit_plugin.dev.patches import require_megatron, require_verl

NAME = "megatron_padded_mask_on_cpu"


def causal_padding_mask(real: torch.Tensor) -> torch.Tensor:
    """Shape (b, 1, s, s), True where attention is masked, from ``real`` (b, s), True on real tokens."""
    length = real.shape[-1]
    future = torch.ones(length, length, dtype=torch.bool, device=real.device).triu(diagonal=1)
    return future[None, None] | ~real[:, None, None, :]


def _with_bshd_mask(original):
    @functools.wraps(original)
    def forward(self, query, key, value, attention_mask, *args, **kwargs):
        if attention_mask is not None and attention_mask.dtype == torch.bool and attention_mask.dim() == 2:
            attention_mask = causal_padding_mask(attention_mask)
        return original(self, query, key, value, attention_mask, *args, **kwargs)

    forward.credit_patch = NAME
    return forward


def apply() -> None:
    """Install the wrapper once; raises on versions the patch was not written for."""
    require_verl(NAME, verl.__version__)
    require_megatron(NAME, "megatron-core")
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    if getattr(DotProductAttention.forward, "credit_patch", None) == NAME:
        return
    DotProductAttention.forward = _with_bshd_mask(DotProductAttention.forward)
