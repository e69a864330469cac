"""Let verl's Megatron engine config take ``dtype=float32`` on the CPU platform.

Why a patch: verl 0.9.1's ``McoreEngineConfig.__post_init__`` (``verl/workers/config/engine.py``) asserts
``dtype in ["bfloat16", "float16"]``. On CPU, bf16 forwards move log-probs by 2e-2..5e-2 against an fp32
forward (too coarse for the equality tests), and megatron-core's bf16 mixed-precision optimizer rejects CPU
tensors, while fp32 parameters get its ``FP32Optimizer``, which runs. The engine itself handles float32
(``PrecisionType.to_dtype``). The wrapper runs verl's validation with the dtype check satisfied and keeps
``float32``, only when the platform's device is ``cpu``; everything else goes through verl's method unchanged.
"""

from __future__ import annotations

import functools

import verl
from verl.utils.device import get_device_name
from verl.workers.config import engine

from credit_plugin.dev.patches import require_verl

NAME = "megatron_fp32_on_cpu"
FP32 = ("float32", "fp32")


def _fp32_on_cpu(original):
    @functools.wraps(original)
    def __post_init__(self) -> None:
        if self.dtype not in FP32 or get_device_name() != "cpu":
            return original(self)
        dtype = self.dtype
        # The config is frozen outside its __post_init__: set the field the way dataclasses do.
        object.__setattr__(self, "dtype", "bfloat16")
        try:
            original(self)
        finally:
            object.__setattr__(self, "dtype", dtype)

    __post_init__.credit_patch = NAME
    return __post_init__


def apply() -> None:
    """Install the wrapper once; raises on a verl version the patch was not written for."""
    require_verl(NAME, verl.__version__)
    config_cls = engine.McoreEngineConfig
    if getattr(config_cls.__post_init__, "credit_patch", None) == NAME:
        return
    config_cls.__post_init__ = _fp32_on_cpu(config_cls.__post_init__)
