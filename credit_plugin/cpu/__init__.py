"""Run verl's own engine workers on a machine without an accelerator.

``register()`` adds the ``cpu`` platform to verl's platform registry in every process; with
``VERL_PLATFORM=cpu`` it also registers verl's FSDP engines for device ``cpu`` and applies the two CPU patches
(``credit_plugin.patches.gloo_backend_on_cpu``, ``credit_plugin.patches.unpinned_offload_on_cpu``); where
megatron-core and mbridge are installed, also verl's Megatron engines with their CPU mends
(``credit_plugin.cpu.megatron``).
It must run before anything imports verl's engine modules: ``verl.workers.engine.fsdp.transformer_impl``
reads the platform's device name at import time, and verl caches the platform on first use.
Importing this package registers.
"""

from __future__ import annotations

import os

from credit_plugin.cpu.platform import NAME, CPUPlatform, register_platform

__all__ = ["CPUPlatform", "cpu_selected", "register"]


def cpu_selected() -> bool:
    """Whether this process selects the CPU platform (``VERL_PLATFORM=cpu``)."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == NAME


def register() -> None:
    """Register the platform; on ``VERL_PLATFORM=cpu`` also the engines and the CPU patches (idempotent)."""
    register_platform()
    if cpu_selected():
        from credit_plugin.cpu.engines import register_engines
        from credit_plugin.patches import gloo_backend_on_cpu, unpinned_offload_on_cpu

        gloo_backend_on_cpu.apply()
        unpinned_offload_on_cpu.apply()
        register_engines()
        from credit_plugin.cpu import megatron

        if megatron.available():
            megatron.enable()


register()
