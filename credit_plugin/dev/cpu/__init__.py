"""Run verl's own engine workers on a machine without an accelerator (development and CI only).

``import credit_plugin`` imports this package only where ``VERL_PLATFORM=cpu`` selects it.
``register()`` adds the ``cpu`` platform to verl's platform registry; with
``VERL_PLATFORM=cpu`` it also registers verl's FSDP engines for device ``cpu`` and applies the two CPU patches
(``credit_plugin.dev.patches.gloo_backend_on_cpu``, ``credit_plugin.dev.patches.unpinned_offload_on_cpu``); where
megatron-core and mbridge are installed, also verl's Megatron engines with their CPU mends
(``credit_plugin.dev.cpu.megatron``).
It must run before anything imports verl's engine modules: ``verl.workers.engine.fsdp.transformer_impl``
reads the platform's device name at import time, and verl caches the platform on first use.
Importing this package registers.
"""

from __future__ import annotations

from credit_plugin.dev.cpu.platform import CPUPlatform, register_platform
from credit_plugin.registration import cpu_platform_selected as cpu_selected

__all__ = ["CPUPlatform", "cpu_selected", "register"]


def register() -> None:
    """Register the platform; on ``VERL_PLATFORM=cpu`` also the engines and the CPU patches (idempotent)."""
    register_platform()
    if cpu_selected():
        from credit_plugin.dev.cpu.engines import register_engines
        from credit_plugin.dev.patches import gloo_backend_on_cpu, unpinned_offload_on_cpu

        gloo_backend_on_cpu.apply()
        unpinned_offload_on_cpu.apply()
        register_engines()
        from credit_plugin.dev.cpu import megatron

        if megatron.available():
            megatron.enable()


register()
