"""verl's ``ActorRolloutRefWorker`` with an EMA teacher kept in its ref engine.

The ``ema`` teacher is ``theta_ref <- (1 - tau) * theta_ref + tau * theta_actor`` after every actor
update. The ref engine is built from the same model and parallel config as the actor, so both hold
identically sharded parameters and the update runs shard by shard on each rank, without gathering.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.tensor import DTensor
from verl.single_controller.base.decorator import Dispatch, register
from verl.workers.engine_workers import ActorRolloutRefWorker


def _engine_modules(engine) -> list[nn.Module]:
    """The model chunks of a verl engine: one module for FSDP, a list of chunks for Megatron."""
    module = engine.module
    return list(module) if isinstance(module, list | tuple | nn.ModuleList) else [module]


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


@torch.no_grad()
def ema_update_(teacher: list[nn.Module], student: list[nn.Module], rate: float) -> float:
    """In place ``teacher <- (1 - rate) * teacher + rate * student`` over local shards.

    Returns:
        The largest absolute change of any teacher parameter on this rank (a cheap check that it moved).
    """
    if len(teacher) != len(student):
        raise ValueError(f"EMA teacher has {len(teacher)} model chunks, the actor {len(student)}")
    largest = 0.0
    for teacher_chunk, student_chunk in zip(teacher, student, strict=True):
        student_params = dict(student_chunk.named_parameters())
        for name, param in teacher_chunk.named_parameters():
            if name not in student_params:
                raise KeyError(f"EMA teacher parameter {name!r} has no actor counterpart (different layouts)")
            target = _local(param.data)
            source = _local(student_params[name].data).to(device=target.device, dtype=target.dtype)
            if source.shape != target.shape:
                raise ValueError(
                    f"EMA shard shapes differ for {name!r}: {tuple(source.shape)} vs {tuple(target.shape)}"
                )
            before = target.clone()
            target.lerp_(source, rate)
            largest = max(largest, float((target - before).abs().max()) if target.numel() else 0.0)
    return largest


class CreditActorRolloutRefWorker(ActorRolloutRefWorker):
    """Adds the EMA teacher update to verl's hybrid worker; everything else is verl's."""

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def update_teacher_ema(self, rate: float) -> float:
        """EMA step of the ref engine towards the actor on every rank; returns the largest change."""
        if self.ref is None or self.actor is None:
            raise RuntimeError(f"the EMA teacher needs a worker with role actor_rollout_ref, got {self.role!r}")
        return ema_update_(_engine_modules(self.ref.engine), _engine_modules(self.actor.engine), rate)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_teacher(self, local_path: str) -> None:
        """Write the teacher's full weights (HF names) to ``local_path/model.safetensors`` from rank 0.

        Gathering the full tensors is collective: every rank walks the whole generator.
        """
        if self.ref is None:
            raise RuntimeError(f"save_teacher needs a worker with a ref engine, got role {self.role!r}")
        params, _ = self.ref.engine.get_per_tensor_param()
        tensors = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in params}
        if torch.distributed.get_rank() == 0:
            os.makedirs(local_path, exist_ok=True)
            save_file(tensors, os.path.join(local_path, "model.safetensors"))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_teacher(self, local_path: str) -> None:
        """Load weights written by :meth:`save_teacher` into the ref engine (resuming an EMA run).

        Every rank reads the file and keeps its own shards (FSDP); Megatron's chunked layout is not supported.
        """
        if self.ref is None:
            raise RuntimeError(f"load_teacher needs a worker with a ref engine, got role {self.role!r}")
        modules = _engine_modules(self.ref.engine)
        if len(modules) != 1:
            raise NotImplementedError("reloading the EMA teacher is implemented for FSDP engines only")
        state = load_file(os.path.join(local_path, "model.safetensors"))
        set_model_state_dict(modules[0], state, options=StateDictOptions(full_state_dict=True))
