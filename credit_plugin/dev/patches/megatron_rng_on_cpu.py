"""Back megatron-core's model-parallel RNG tracker with the host generator on the CPU platform.

Why a patch: verl 0.9.1 seeds megatron-core's tracker on every device (``set_random_seed`` in
``verl/workers/engine/megatron/utils.py`` calls ``model_parallel_cuda_manual_seed``), and megatron-core's layers
initialise their weights under ``get_cuda_rng_tracker().fork()``. In megatron-core 0.16.1
(``megatron/core/tensor_parallel/random.py``) the tracker stores and swaps CUDA generator states:
``CudaRNGStatesTracker.add`` calls ``torch.cuda.get_rng_state`` / ``torch.cuda.manual_seed``, and ``fork`` goes
through ``_get_cuda_rng_state`` / ``_set_cuda_rng_state``. On a torch build without CUDA those raise. Here the
two module functions get the host generator's state and ``add`` runs with the host's ``get_rng_state`` /
``manual_seed`` in place of CUDA's, which keeps the tracker's semantics (named states, forked and restored)
on the host generator.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any

import torch
import verl

from credit_plugin.dev.patches import require_megatron, require_verl

NAME = "megatron_rng_on_cpu"


def _get_host_rng_state(device: Any = None, clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    return torch.get_rng_state()


def _set_host_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


_get_host_rng_state.credit_patch = NAME


@contextmanager
def _cuda_rng_on_host():
    saved = torch.cuda.get_rng_state, torch.cuda.manual_seed
    torch.cuda.get_rng_state = _get_host_rng_state
    torch.cuda.manual_seed = torch.manual_seed
    try:
        yield
    finally:
        torch.cuda.get_rng_state, torch.cuda.manual_seed = saved


def _add_on_host(original):
    @functools.wraps(original)
    def add(self, name: str, seed: int) -> None:
        with _cuda_rng_on_host():
            original(self, name, seed)

    return add


def apply() -> None:
    """Install the host-generator functions once (only without CUDA); raises on versions not written for."""
    require_verl(NAME, verl.__version__)
    require_megatron(NAME, "megatron-core")
    from megatron.core.tensor_parallel import random

    if torch.cuda.is_available() or getattr(random._get_cuda_rng_state, "credit_patch", None) == NAME:
        return
    random._get_cuda_rng_state = _get_host_rng_state
    random._set_cuda_rng_state = _set_host_rng_state
    random.CudaRNGStatesTracker.add = _add_on_host(random.CudaRNGStatesTracker.add)
