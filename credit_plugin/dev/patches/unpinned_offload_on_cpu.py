"""Build FSDP2's ``CPUOffloadPolicy`` without pinned memory when the device is ``cpu``.

Why a patch: verl 0.9.1's FSDP engine (``verl/workers/engine/fsdp/transformer_impl.py``) gives every
forward-only engine (the reference policy) ``CPUOffloadPolicy(pin_memory=True)``, hard-coded. Pinning page-locks
host memory for an accelerator and fails on a machine without one ("Cannot access accelerator device when
none is available"); no config option reaches it (turning ``forward_only`` off instead makes the ref engine
build an optimizer from a config section it lacks). On ``cpu`` the policy is built with ``pin_memory=False``,
which changes nothing else: parameters already live in host memory.

Installed as the ``CPUOffloadPolicy`` name that the engine module looks up when it builds the policy.
"""

from __future__ import annotations

import verl
from verl.utils.device import get_device_name
from verl.workers.engine.fsdp import transformer_impl

from credit_plugin.dev.patches import require_verl

NAME = "unpinned_offload_on_cpu"


def _unpinned_on_cpu(policy_cls):
    class CPUOffloadPolicy(policy_cls):
        def __init__(self, pin_memory: bool = True):
            super().__init__(pin_memory=pin_memory and get_device_name() != "cpu")

    CPUOffloadPolicy.credit_patch = NAME
    return CPUOffloadPolicy


def apply() -> None:
    """Install the subclass once; raises on a verl version the patch was not written for."""
    require_verl(NAME, verl.__version__)
    if getattr(transformer_impl.CPUOffloadPolicy, "credit_patch", None) == NAME:
        return
    transformer_impl.CPUOffloadPolicy = _unpinned_on_cpu(transformer_impl.CPUOffloadPolicy)
