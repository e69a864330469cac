"""Build mbridge's models with megatron-core's local (non Transformer Engine) layers on the CPU platform.

Why a patch: mbridge 0.15.1's ``LLMBridge._get_transformer_layer_spec`` (``mbridge/core/llm_bridge.py``) calls
``get_gpt_decoder_block_spec(config, use_transformer_engine=True)``, hard-coded; Transformer Engine needs
CUDA. The wrapper installed as that module's ``get_gpt_decoder_block_spec`` asks for the local spec on ``cpu``.

The local spec keeps the pre-attention and pre-MLP RMSNorms as modules of their own
(``input_layernorm.weight``, ``pre_mlp_layernorm.weight``) where Transformer Engine fuses them into the next
linear layer (``linear_qkv.layer_norm_weight``, ``linear_fc1.layer_norm_weight``). Each registered bridge whose
name map has the fused names gets the local names mapped to the same Hugging Face weights.
"""

from __future__ import annotations

import functools

import verl
from verl.utils.device import get_device_name

from credit_plugin.dev.patches import require_megatron, require_verl

NAME = "megatron_local_spec_on_cpu"
# Transformer Engine's fused norm weight -> the local spec's separate norm module, per name map.
FUSED_TO_LOCAL = {
    "_ATTENTION_MAPPING": ("self_attention.linear_qkv.layer_norm_weight", "_OTHER_MAPPING", "input_layernorm.weight"),
    "_MLP_MAPPING": ("mlp.linear_fc1.layer_norm_weight", "_MLP_MAPPING", "pre_mlp_layernorm.weight"),
}


def _local_spec_on_cpu(original):
    @functools.wraps(original)
    def get_gpt_decoder_block_spec(config, use_transformer_engine: bool, *args, **kwargs):
        if get_device_name() == "cpu":
            use_transformer_engine = False
        return original(config, use_transformer_engine, *args, **kwargs)

    get_gpt_decoder_block_spec.credit_patch = NAME
    return get_gpt_decoder_block_spec


def _map_local_norms(bridge_cls: type) -> None:
    """Add the local spec's norm names to ``bridge_cls``'s own copies of its name maps."""
    for source, (fused, target, local) in FUSED_TO_LOCAL.items():
        hf_names = getattr(bridge_cls, source, {}).get(fused)
        if hf_names is None:
            continue
        # Copy: the maps are class attributes, possibly inherited and shared with other bridges.
        setattr(bridge_cls, target, {**getattr(bridge_cls, target, {}), local: list(hf_names)})


def apply() -> None:
    """Install the wrapper and the name maps once; raises on versions the patch was not written for."""
    require_verl(NAME, verl.__version__)
    require_megatron(NAME, "megatron-core", "mbridge")
    from mbridge.core import llm_bridge
    from mbridge.core.bridge import _MODEL_REGISTRY

    if getattr(llm_bridge.get_gpt_decoder_block_spec, "credit_patch", None) == NAME:
        return
    llm_bridge.get_gpt_decoder_block_spec = _local_spec_on_cpu(llm_bridge.get_gpt_decoder_block_spec)
    for bridge_cls in set(_MODEL_REGISTRY.values()):
        _map_local_norms(bridge_cls)
