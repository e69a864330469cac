"""Small, named patches for what verl 0.9.1 offers no extension point for.

Each module holds one patch: a docstring with the reason, ``NAME``, and an ``apply()`` that checks the
versions it was written against first. The top-level ``patches/`` folder is installed as
``credit_plugin.patches``. The ``megatron_*`` patches are development-only mends that let verl's Megatron
engine run on the CPU platform (``credit_plugin.dev.cpu.megatron``); nothing applies them on an accelerator.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

SUPPORTED_VERL = ("0.9.",)
# The Megatron stack the CPU mends were written and tested against (megatron-core 0.16.1 is the newest for
# Python 3.11; verl's default megatron-bridge needs Python >= 3.12, so the CPU path uses the vanilla mbridge).
SUPPORTED_MEGATRON = {"megatron-core": ("0.16.",), "mbridge": ("0.15.",)}


def require_verl(patch: str, version: str) -> None:
    """Raise unless ``version`` is a verl release the patch ``patch`` was written and tested against."""
    if not version.startswith(SUPPORTED_VERL):
        raise RuntimeError(
            f"credit_plugin patch {patch!r} targets verl {SUPPORTED_VERL}, found verl {version}; "
            f"upgrade credit_plugin or install verl>=0.9.1,<0.10"
        )


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
