"""verl's ``ActorRolloutRefWorker`` with the teachers its own engines do not offer.

- ``ema``: ``theta_ref <- (1 - tau) * theta_ref + tau * theta_actor`` after every actor update. The ref
  engine is built from the same model and parallel config as the actor, so both hold identically sharded
  parameters (FSDP shards, or Megatron's tensor/pipeline-parallel shards under the same TP/PP layout, which
  :func:`check_same_layout` requires) and the update runs shard by shard on each rank, without gathering.
- ``trust_region``: ``log_softmax((1 - tau) * z_frozen + tau * z_current)``, mixed inside the actor's
  log-prob pass through the engines' logits hook (``credit_plugin.trust_region_engines``): the frozen model
  is the ref engine, or on FSDP the actor with its LoRA adapter disabled. On Megatron each tensor-parallel
  rank mixes its vocabulary shard; the ref engine must be sharded like the actor, without pipeline stages.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import nullcontext
from functools import partial

import torch
from safetensors.torch import load_file, save_file
from tensordict import TensorDict
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.tensor import DTensor
from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.utils.device import get_torch_device
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.engine_workers import ActorRolloutRefWorker

from credit_plugin.logit_workers import LogitLevelWorkerMixin
from credit_plugin.megatron_layout import check_same_layout, check_trust_region_pipeline
from credit_plugin.trust_region_engines import (
    MegatronTrustRegion,
    TrustRegionLogits,
    engine_logits,
    megatron_engine_logits,
)


def is_megatron(engine) -> bool:
    """Whether ``engine`` is verl's Megatron engine (by its config, so megatron-core need not be importable)."""
    return getattr(engine.engine_config, "strategy", None) == "megatron"


def _engine_modules(engine) -> list[nn.Module]:
    """The model chunks of a verl engine: one module for FSDP, the unwrapped chunks (one per virtual
    pipeline stage) for Megatron, whose actor chunks sit inside its DDP (and Float16) wrappers."""
    if is_megatron(engine):
        from verl.utils.megatron_utils import unwrap_model

        return [unwrap_model(chunk) for chunk in engine.module]
    module = engine.module
    return list(module) if isinstance(module, list | tuple | nn.ModuleList) else [module]


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


# Largest number of elements one temporary of the EMA change measure may hold.
_CHUNK = 1 << 22
# Largest safetensors file the teacher checkpoint writes; rank 0 holds at most this much (plus one tensor).
MAX_SHARD_BYTES = 2 << 30
EMA_DTYPES = (torch.float32, torch.float64)
SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"


@torch.no_grad()
def ema_update_(
    teacher: list[nn.Module],
    student: list[nn.Module],
    rate: float,
    master: dict[str, torch.Tensor] | None = None,
    master_device: str | torch.device | None = None,
) -> float:
    """In place ``teacher <- (1 - rate) * teacher + rate * student`` over local shards.

    The EMA state must be fp32 (or fp64): in bf16 a step of ``rate * (student - teacher)`` falls below the
    storage resolution and the EMA loses its updates. A teacher stored in fp32 is the state itself. A teacher
    stored in a lower precision (verl's Megatron engine accepts only bf16/fp16) needs ``master``: an fp32 copy
    of each local shard, keyed ``"{chunk}.{name}"``, created from the teacher's own weights on the first step
    (on ``master_device``, default the shard's device); each step updates it and casts it into the shard.

    Returns:
        The largest absolute change ``rate * |student - teacher|`` of any parameter on this rank (a cheap check
        that it moved), measured chunk by chunk before the update, without a copy of any shard.
    """
    if len(teacher) != len(student):
        raise ValueError(f"EMA teacher has {len(teacher)} model chunks, the actor {len(student)}")
    largest = 0.0
    for number, (teacher_chunk, student_chunk) in enumerate(zip(teacher, student, strict=True)):
        student_params = dict(student_chunk.named_parameters())
        for name, param in teacher_chunk.named_parameters():
            if name not in student_params:
                raise KeyError(f"EMA teacher parameter {name!r} has no actor counterpart (different layouts)")
            target = _local(param.data)
            state = target
            if target.dtype not in EMA_DTYPES:
                if master is None:
                    raise ValueError(
                        f"credit.teacher=ema: the ref engine stores {name!r} in {target.dtype}, where an EMA step of "
                        f"rate {rate} is lost to rounding; set actor_rollout_ref.ref.fsdp_config.model_dtype=fp32 "
                        "(FSDP), or keep an fp32 master copy (the Megatron worker does)"
                    )
                key = f"{number}.{name}"
                if key not in master:
                    master[key] = target.to(device=master_device or target.device, dtype=torch.float32, copy=True)
                state = master[key]
            source = _local(student_params[name].data).to(device=state.device, dtype=state.dtype)
            if source.shape != state.shape:
                raise ValueError(f"EMA shard shapes differ for {name!r}: {tuple(source.shape)} vs {tuple(state.shape)}")
            for old, new in zip(state.reshape(-1).split(_CHUNK), source.reshape(-1).split(_CHUNK), strict=True):
                largest = max(largest, rate * float((new - old).abs().max()))
            state.lerp_(source, rate)
            if state is not target:
                target.copy_(state)  # rounds the fp32 state into the teacher's storage dtype
    return largest


def _loaded(engine):
    """verl's own load/offload context of ``engine`` when its parameters are offloaded, else nothing.

    With ``param_offload`` verl moves the parameters to the host after each call and frees their device storage
    (Megatron resizes the DDP buffers' ``param_data`` to 0: reading a shard then fails with "data is not
    allocated"); ``eval_mode`` loads them back for the duration and offloads them again on exit (no optimizer
    state, no gradient zeroing, unlike ``train_mode``).
    """
    return engine.eval_mode() if engine.is_param_offload_enabled else nullcontext()


def ema_step(actor_engine, ref_engine, rate: float, master: dict[str, torch.Tensor]) -> float:
    """One EMA step of verl engine ``ref_engine`` towards ``actor_engine`` on this rank (see :func:`ema_update_`).

    Both engines run inside their load/offload context (:func:`_loaded`). A Megatron ref engine (bf16 or fp16
    by verl's config) keeps its fp32 state in ``master``, on the host when the ref engine is offloaded.
    """
    with _loaded(actor_engine), _loaded(ref_engine):
        if actor_engine.is_param_offload_enabled or ref_engine.is_param_offload_enabled:
            # verl fills host copies of offloaded shards with non-blocking device-to-host copies (FSDP2:
            # ``offload_fsdp2_model_to_cpu``, whose comment asks host readers to synchronise first), and the
            # FSDP ref engine keeps its shards in host memory; lerp_ on a host tensor reads it at once, not in
            # stream order, so wait for every pending copy before any shard is read.
            get_torch_device().synchronize()
        device = "cpu" if ref_engine.is_param_offload_enabled else None
        return ema_update_(_engine_modules(ref_engine), _engine_modules(actor_engine), rate, master, device)


class ShardedSafetensorsWriter:
    """Writes tensors as they come into safetensors files of at most ``max_shard_bytes`` each (HF's layout:
    one ``model.safetensors``, or ``model-0000i-of-0000N.safetensors`` with ``model.safetensors.index.json``).

    Holds at most one shard (plus the tensor being added) in memory; ``peak_bytes`` records the most it held.
    """

    def __init__(self, folder: str, max_shard_bytes: int = MAX_SHARD_BYTES):
        self.folder, self.max_shard_bytes = folder, max_shard_bytes
        self.shard: dict[str, torch.Tensor] = {}
        self.shard_bytes = self.peak_bytes = self.total_bytes = 0
        self.files: list[list[str]] = []  # tensor names of each written shard
        # A save killed before verl marked its step complete may have left files here; the step is saved again
        # after resuming from the previous one, and a stale index or shard must not mix into the new files.
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder, exist_ok=True)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.shard and self.shard_bytes + size > self.max_shard_bytes:
            self._flush()
        self.shard[name] = tensor
        self.shard_bytes += size
        self.total_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.shard_bytes)

    def _flush(self) -> None:
        path = os.path.join(self.folder, f"shard-{len(self.files)}.tmp")
        save_file(self.shard, path)
        self.files.append(list(self.shard))
        self.shard, self.shard_bytes = {}, 0

    def close(self) -> None:
        """Write the last shard and give the files their final names (and the index when there are several)."""
        if self.shard or not self.files:
            self._flush()
        count = len(self.files)
        if count == 1:
            os.replace(os.path.join(self.folder, "shard-0.tmp"), os.path.join(self.folder, SINGLE))
            return
        weight_map = {}
        for number, names in enumerate(self.files, start=1):
            final = f"model-{number:05d}-of-{count:05d}.safetensors"
            os.replace(os.path.join(self.folder, f"shard-{number - 1}.tmp"), os.path.join(self.folder, final))
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        with open(os.path.join(self.folder, INDEX), "w") as handle:
            json.dump(index, handle, indent=2)


def has_teacher_weights(folder: str) -> bool:
    """True when ``folder`` holds a teacher written by :class:`ShardedSafetensorsWriter`."""
    return any(os.path.exists(os.path.join(folder, name)) for name in (SINGLE, INDEX))


def read_teacher_weights(folder: str) -> dict[str, torch.Tensor]:
    """The full state dict written by :class:`ShardedSafetensorsWriter` (one file or an indexed set)."""
    index = os.path.join(folder, INDEX)
    if not os.path.exists(index):
        return load_file(os.path.join(folder, SINGLE))
    with open(index) as handle:
        files = sorted(set(json.load(handle)["weight_map"].values()))
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(os.path.join(folder, name)))
    return state


def full_state_items(module: nn.Module):
    """``(name, full tensor)`` of ``module``'s state dict under its own keys, one tensor at a time.

    The module's keys (``state_dict``), not an inference engine's export: a mixture-of-experts layer keeps its
    packed expert tensors (``mlp.experts.gate_up_proj``), so :func:`load_full_state` reloads them strictly.
    FSDP2 shards (``DTensor``) are gathered one by one (collective: every rank walks the whole generator), on the
    device of their mesh, since a host-offloaded shard cannot be gathered over an accelerator's process group;
    FSDP1 goes through torch's full-state-dict reader (rank 0 holds it, on the host).
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(module, FullyShardedDataParallel):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        yield from get_model_state_dict(module, options=options).items()
        return
    for name, value in module.state_dict().items():
        if isinstance(value, DTensor):
            mesh_device = value.device_mesh.device_type
            value = (value if value.device.type == mesh_device else value.to(mesh_device)).full_tensor()
        yield name, value


def load_full_state(module: nn.Module, state: dict[str, torch.Tensor] | None) -> None:
    """Load a full state dict (module keys, strict) into ``module``'s shards; ``state`` is read on rank 0 only
    (None elsewhere) and broadcast, so the other ranks never read the files."""
    distributed = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=distributed, strict=True)
    set_model_state_dict(module, state if state is not None else {}, options=options)


def rotate_teacher_checkpoints(root: str, max_to_keep: int | None) -> list[str]:
    """Delete ``root/global_step_N/teacher`` folders beyond the newest ``max_to_keep`` (verl's
    ``trainer.max_actor_ckpt_to_keep``; None or 0 keeps all, as verl does). Returns the deleted folders."""
    if not max_to_keep or max_to_keep < 1 or not os.path.isdir(root):
        return []
    steps = sorted(
        int(entry[len("global_step_") :])
        for entry in os.listdir(root)
        if re.fullmatch(r"global_step_\d+", entry) and os.path.isdir(os.path.join(root, entry, "teacher"))
    )
    removed = [os.path.join(root, f"global_step_{step}", "teacher") for step in steps[:-max_to_keep]]
    for folder in removed:
        shutil.rmtree(folder)
    return removed


class CreditActorRolloutRefWorker(LogitLevelWorkerMixin, ActorRolloutRefWorker):
    """Adds the EMA and trust-region teachers (and the logit level, ``credit_plugin.logit_workers``) to verl's
    hybrid worker; everything else is verl's."""

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_trust_region_log_prob(self, data: TensorDict) -> TensorDict:
        """``compute_log_prob`` of the trust-region teacher: ``log_softmax((1 - tau) * z_frozen + tau * z_actor)``.

        ``data`` is the batch ``compute_log_prob`` takes, plus the non-tensor ``trust_region_coef`` (tau).
        The frozen model is the ref engine, or the actor with its LoRA adapter disabled when the worker has
        no ref engine (verl's ``ref_in_actor``). Returns verl's nested ``log_probs`` over every sequence.
        """
        if self.actor is None:
            raise RuntimeError(f"the trust-region teacher needs the actor engine, got role {self.role!r}")
        engine = self.actor.engine
        if not (is_megatron(engine) or isinstance(engine, FSDPEngineWithLMHead)):
            raise NotImplementedError(
                f"credit.teacher=trust_region is implemented for verl's FSDP and Megatron engines, not "
                f"{type(engine).__name__}"
            )
        if self.actor.engine_config.use_fused_kernels:
            raise ValueError(
                "credit.teacher=trust_region needs the logits: set actor_rollout_ref.model.use_fused_kernels=false"
            )
        coef = tu.pop(data, key="trust_region_coef")
        if coef is None:
            raise ValueError("compute_trust_region_log_prob needs the non-tensor field trust_region_coef (tau)")
        coef = float(coef)
        if is_megatron(engine):
            output = self._megatron_trust_region(data, coef)
        else:
            output = self._fsdp_trust_region(data, coef)
        return output.cpu() if output is not None else None

    def _fsdp_trust_region(self, data: TensorDict, coef: float) -> TensorDict | None:
        engine = self.actor.engine
        if self.ref is None and not hasattr(engine.module, "disable_adapter"):
            raise RuntimeError(
                "the trust-region teacher needs a frozen model: a ref engine (role actor_rollout_ref) or a LoRA "
                f"actor whose adapter can be disabled; this worker has role {self.role!r} and no adapter"
            )
        if self.ref is not None:
            frozen_engine, frozen_mode = self.ref.engine, self.ref.engine.eval_mode()

            def frozen(micro_batch: TensorDict) -> torch.Tensor:
                return engine_logits(frozen_engine, micro_batch)
        else:
            frozen_mode = nullcontext()

            def frozen(micro_batch: TensorDict) -> torch.Tensor:
                with engine.disable_adapter():
                    return engine_logits(engine, micro_batch)

        tu.assign_non_tensor(data, compute_loss=True, distillation_use_topk=True, distillation_only=True)
        # TrainingWorker.infer_batch hands its loss function to the engine, which passes it the logits.
        loss_fn = self.actor.loss_fn
        self.actor.loss_fn = TrustRegionLogits(engine, frozen, coef)
        try:
            with frozen_mode:
                return self.actor.infer_batch(data)
        finally:
            self.actor.loss_fn = loss_fn

    def _megatron_trust_region(self, data: TensorDict, coef: float) -> TensorDict | None:
        if self.ref is None:
            # verl's Megatron LoRA needs Megatron-Bridge, which this plugin has not been run with.
            raise RuntimeError(
                "credit.teacher=trust_region on Megatron needs a ref engine (role actor_rollout_ref) as its frozen "
                f"model; this worker has role {self.role!r} (a LoRA actor's adapter-free forward is FSDP-only)"
            )
        check_trust_region_pipeline(self.actor.engine.engine_config)
        check_same_layout(self.ref.engine.engine_config, self.actor.engine.engine_config, teacher="trust_region")
        # No loss: the engine's logits hook returns the mixed log-probs, which verl gathers as its own.
        tu.assign_non_tensor(data, compute_loss=False, distillation_use_topk=True, distillation_only=True)
        ref = self.ref.engine
        with ref.eval_mode(), MegatronTrustRegion(self.actor.engine, partial(megatron_engine_logits, ref), coef):
            return self.actor.infer_batch(data)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def update_teacher_ema(self, rate: float) -> float:
        """EMA step of the ref engine towards the actor on every rank; returns the largest change."""
        if self.ref is None or self.actor is None:
            raise RuntimeError(f"the EMA teacher needs a worker with role actor_rollout_ref, got {self.role!r}")
        if is_megatron(self.actor.engine):
            check_same_layout(self.ref.engine.engine_config, self.actor.engine.engine_config, teacher="ema")
        return ema_step(self.actor.engine, self.ref.engine, rate, self._ema_master())

    def _ema_master(self) -> dict[str, torch.Tensor]:
        """This rank's fp32 EMA state of a ref engine stored in bf16/fp16 (empty for an fp32 ref): created on
        the first EMA step from the ref's weights, dropped when :meth:`load_teacher` replaces them."""
        if not hasattr(self, "_credit_ema_master"):
            self._credit_ema_master: dict[str, torch.Tensor] = {}
        return self._credit_ema_master

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_teacher(self, local_path: str) -> None:
        """Write the teacher's full weights (HF names) to ``local_path`` from rank 0, shard by shard.

        FSDP writes the module's own state-dict keys (:func:`full_state_items`), Megatron the bridge's Hugging
        Face export. Gathering the full tensors is collective: every rank walks the whole generator (FSDP's
        gathered tensors, or Megatron's bridge export across its tensor/pipeline-parallel ranks), but only rank 0 copies
        them to CPU, into files of at most ``MAX_SHARD_BYTES``, so its host memory stays bounded. For Megatron
        the model's HF config goes next to them, so that the folder loads like a Hugging Face checkpoint.
        Rotating old teacher folders is the trainer's (after verl marks the checkpoint complete).
        """
        if self.ref is None:
            raise RuntimeError(f"save_teacher needs a worker with a ref engine, got role {self.role!r}")
        if is_megatron(self.ref.engine):
            params, _ = self.ref.engine.get_per_tensor_param()
        else:
            # The module's own keys, not verl's per-tensor export (an inference engine's layout, e.g. per-expert
            # tensors of a mixture-of-experts layer that the module packs), so that load_teacher can reload them.
            (module,) = _engine_modules(self.ref.engine)
            params = full_state_items(module)
        writer = ShardedSafetensorsWriter(local_path) if torch.distributed.get_rank() == 0 else None
        for name, tensor in params:
            if writer is not None:
                writer.add(name, tensor.detach().to("cpu", copy=True).contiguous())
        if writer is not None:
            writer.close()
            if is_megatron(self.ref.engine):
                self.ref.engine.model_config.hf_config.save_pretrained(local_path)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_teacher(self, local_path: str) -> None:
        """Load weights written by :meth:`save_teacher` into the ref engine (resuming an EMA run).

        FSDP: rank 0 reads the files (module keys, see :meth:`save_teacher`) and torch's full-state-dict loader
        broadcasts them into every rank's shards. Megatron: the engine's own bridge (as it loaded the initial
        model) splits the full weights over the current TP/PP layout, every rank reading what its shards need.
        """
        if self.ref is None:
            raise RuntimeError(f"load_teacher needs a worker with a ref engine, got role {self.role!r}")
        engine = self.ref.engine
        self._ema_master().clear()  # the EMA state restarts from the loaded weights
        if is_megatron(engine):
            if not os.path.exists(os.path.join(local_path, "config.json")):
                raise FileNotFoundError(
                    f"{local_path} has no config.json: the Megatron engine loads teachers as Hugging Face folders "
                    "(save_teacher writes one)"
                )
            if engine.vanilla_bridge:
                engine.bridge.load_weights(engine.module, local_path)
            else:
                engine.bridge.load_hf_weights(engine.module, local_path)
            return
        modules = _engine_modules(engine)
        if len(modules) != 1:
            raise NotImplementedError(f"expected one FSDP module in the ref engine, got {len(modules)}")
        rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        load_full_state(modules[0], read_teacher_weights(local_path) if rank0 else None)
