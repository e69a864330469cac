"""Small, named patches for what verl 0.9.1 offers no extension point for.

Each module holds one patch: a docstring with the reason, ``NAME``, and an ``apply()`` that checks the
versions it was written against first. The development-only mends of the CPU platform (gloo, unpinned offload,
verl's Megatron engine on CPU) live with it, in ``credit_plugin.dev.patches``.
"""

from __future__ import annotations

# The verl releases every patch (and the trainer's mirrored ``_compute_advantage``) was read and tested against:
# exact versions, since a patch release may change the code a patch wraps.
SUPPORTED_VERL = ("0.9.1",)


def require_verl(patch: str, version: str) -> None:
    """Raise unless ``version`` is a verl release the patch ``patch`` was written and tested against."""
    if version not in SUPPORTED_VERL:
        wanted = " or ".join(f"verl=={supported}" for supported in SUPPORTED_VERL)
        raise RuntimeError(
            f"credit_plugin patch {patch!r} targets verl {' or '.join(SUPPORTED_VERL)} only (verified there), "
            f"found verl {version}; "
            f"install {wanted}, or a credit_plugin release verified against verl {version}"
        )
