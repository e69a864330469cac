"""Development-only mends that let verl run on the CPU platform (``credit_plugin.dev.cpu``).

Each module holds one patch, as in ``credit_plugin.patches``: a docstring with the reason, ``NAME``, and an
``apply()`` that checks the versions it was written against first. ``gloo_backend_on_cpu`` and
``unpinned_offload_on_cpu`` are applied by ``credit_plugin.dev.cpu`` under ``VERL_PLATFORM=cpu``; the
``megatron_*`` ones let verl's Megatron engine run there (``credit_plugin.dev.cpu.megatron``). Nothing applies
them on an accelerator.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from credit_plugin.patches import require_verl

__all__ = ["SUPPORTED_MEGATRON", "require_megatron", "require_verl"]

# The Megatron stack the CPU mends were written and tested against (megatron-core 0.16.1 is the newest for
# Python 3.11; verl's default megatron-bridge needs Python >= 3.12, so the CPU path uses the vanilla mbridge).
SUPPORTED_MEGATRON = {"megatron-core": ("0.16.",), "mbridge": ("0.15.",)}


def require_megatron(patch: str, *packages: str) -> None:
    """Raise unless each of ``packages`` (keys of :data:`SUPPORTED_MEGATRON`) is a release the patch targets."""
    for package in packages:
        try:
            found = version(package)
        except PackageNotFoundError as error:
            raise RuntimeError(
                f"credit_plugin patch {patch!r} needs {package}; install credit_plugin[megatron]"
            ) from error
        if not found.startswith(SUPPORTED_MEGATRON[package]):
            raise RuntimeError(
                f"credit_plugin patch {patch!r} targets {package} {SUPPORTED_MEGATRON[package]}, found {package} "
                f"{found}; install credit_plugin[megatron] (megatron-core==0.16.1, mbridge==0.15.1)"
            )
