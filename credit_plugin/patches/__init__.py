"""Small, named patches for what verl 0.9.1 offers no extension point for.

Each module holds one patch: a docstring with the reason, ``NAME``, and an ``apply()`` that checks the
versions it was written against first. The development-only mends of the CPU platform (gloo, unpinned offload,
verl's Megatron engine on CPU) live with it, in ``credit_plugin.dev.patches``.
"""

from __future__ import annotations

SUPPORTED_VERL = ("0.9.",)


def require_verl(patch: str, version: str) -> None:
    """Raise unless ``version`` is a verl release the patch ``patch`` was written and tested against."""
    if not version.startswith(SUPPORTED_VERL):
        raise RuntimeError(
            f"credit_plugin patch {patch!r} targets verl {SUPPORTED_VERL}, found verl {version}; "
            f"upgrade credit_plugin or install verl>=0.9.1,<0.10"
        )
