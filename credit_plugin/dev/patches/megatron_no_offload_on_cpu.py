"""Make verl's Megatron model load/offload a no-op on the CPU platform, where host memory is the device's.

Why a patch: verl 0.9.1's Megatron engine (``verl/workers/engine/megatron/transformer_impl.py``) calls
``load_megatron_model_to_gpu`` before every weight export to the rollout (``get_per_tensor_param``) and
checkpoint save, whatever the offload config. That function restores each DDP buffer's ``param_data`` from
host memory, and megatron-core allocates ``param_data`` only with the distributed optimizer, which rejects CPU
tensors; without it (``use_distributed_optimizer=false``, the CPU config) ``param_data`` is None and the
load fails (``'NoneType' object has no attribute 'storage'``). Its counterpart ``offload_megatron_model_to_cpu``
pins host memory, which fails without an accelerator. On ``cpu`` the parameters and gradients already live
where the device would hold them, so both are no-ops there; on an accelerator verl's functions run unchanged.

Installed as the names the engine module calls.
"""

from __future__ import annotations

import functools

import verl
from verl.utils.device import get_device_name
from verl.workers.engine.megatron import transformer_impl

from credit_plugin.dev.patches import require_verl

NAME = "megatron_no_offload_on_cpu"
FUNCTIONS = ("load_megatron_model_to_gpu", "offload_megatron_model_to_cpu")


def _noop_on_cpu(original):
    @functools.wraps(original)
    def move(*args, **kwargs) -> None:
        if get_device_name() != "cpu":
            return original(*args, **kwargs)
        return None

    move.credit_patch = NAME
    return move


def apply() -> None:
    """Install the wrappers once; raises on a verl version the patch was not written for."""
    require_verl(NAME, verl.__version__)
    for name in FUNCTIONS:
        function = getattr(transformer_impl, name)
        if getattr(function, "credit_patch", None) != NAME:
            setattr(transformer_impl, name, _noop_on_cpu(function))
