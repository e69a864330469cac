"""verl's ``ActorRolloutRefWorker`` with the teachers its own engines do not offer.

- ``ema``: ``theta_ref <- (1 - tau) * theta_ref + tau * theta_actor`` after every actor update. The ref
  engine is built from the same model and parallel config as the actor, so both hold identically sharded
  parameters (FSDP shards, or Megatron's tensor/pipeline-parallel shards under the same TP/PP layout, which
  :func:`check_same_layout` requires) and the update runs shard by shard on each rank, without gathering.
- ``trust_region``: ``log_softmax((1 - tau) * z_frozen + tau * z_current)``. verl's FSDP engine hands a
  micro-batch's full logits to its loss function when the batch carries ``distillation_use_topk`` (the hook
  of its top-k distillation); :class:`TrustRegionLogits` uses that hook during the actor's forward to run
  the frozen model (the ref engine, or the actor with its LoRA adapter disabled) on the same micro-batch and
  mix the two, so no full logits ever leave the worker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tensordict import TensorDict
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.tensor import DTensor
from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.engine_workers import ActorRolloutRefWorker

from credit_plugin.trust_region import trust_region_log_probs

# The fields of verl's ``McoreEngineConfig`` that decide which shard of which parameter a rank holds.
MEGATRON_LAYOUT = (
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
    "virtual_pipeline_model_parallel_size",
    "context_parallel_size",
    "expert_model_parallel_size",
    "expert_tensor_parallel_size",
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


def check_same_layout(teacher_config, student_config, teacher: str = "ref", student: str = "actor") -> None:
    """Raise unless two Megatron engine configs shard parameters the same way (:data:`MEGATRON_LAYOUT`).

    Args:
        teacher_config, student_config: ``McoreEngineConfig`` objects or ``megatron`` config sections.
        teacher, student: the config sections' roles, for the error message.
    """
    differing = [
        f"{field}: {student} {student_config.get(field)} vs {teacher} {teacher_config.get(field)}"
        for field in MEGATRON_LAYOUT
        if teacher_config.get(field) != student_config.get(field)
    ]
    if differing:
        raise ValueError(
            f"credit.teacher=ema needs the {teacher} engine sharded like the {student} (the EMA runs shard by "
            f"shard); set actor_rollout_ref.{teacher}.megatron.* equal to actor_rollout_ref.{student}.megatron.*: "
            + "; ".join(differing)
        )


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


# Largest number of elements one temporary of the EMA change measure may hold.
_CHUNK = 1 << 22
# Largest safetensors file the teacher checkpoint writes; rank 0 holds at most this much (plus one tensor).
MAX_SHARD_BYTES = 2 << 30
EMA_DTYPES = (torch.float32, torch.float64)
SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"


@torch.no_grad()
def ema_update_(teacher: list[nn.Module], student: list[nn.Module], rate: float) -> float:
    """In place ``teacher <- (1 - rate) * teacher + rate * student`` over local shards.

    The teacher must be stored in fp32 (or fp64): in bf16 a step of ``rate * (student - teacher)`` falls
    below the storage resolution and the EMA loses its updates.

    Returns:
        The largest absolute change ``rate * |student - teacher|`` of any parameter on this rank (a cheap check
        that it moved), measured chunk by chunk before the update, without a copy of any shard.
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
            if target.dtype not in EMA_DTYPES:
                raise ValueError(
                    f"credit.teacher=ema: the ref engine stores {name!r} in {target.dtype}, where an EMA step of "
                    f"rate {rate} is lost to rounding; set actor_rollout_ref.ref.fsdp_config.model_dtype=fp32"
                )
            source = _local(student_params[name].data).to(device=target.device, dtype=target.dtype)
            if source.shape != target.shape:
                raise ValueError(
                    f"EMA shard shapes differ for {name!r}: {tuple(source.shape)} vs {tuple(target.shape)}"
                )
            for old, new in zip(target.reshape(-1).split(_CHUNK), source.reshape(-1).split(_CHUNK), strict=True):
                largest = max(largest, rate * float((new - old).abs().max()))
            target.lerp_(source, rate)
    return largest


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


def _zero_loss(data: TensorDict) -> tuple[torch.Tensor, dict]:
    return torch.zeros((), device=data["input_ids"].device), {}


def engine_logits(engine: FSDPEngineWithLMHead, micro_batch: TensorDict) -> torch.Tensor:
    """The temperature-scaled logits of ``micro_batch`` from ``engine``'s own forward step.

    ``micro_batch`` must carry ``distillation_use_topk`` and ``distillation_only`` (verl then passes the
    logits to the loss function and skips its own log-probs).

    Returns:
        Tensor of shape (1, N, V): N packed positions in the engine's layout (sliced and padded under
        Ulysses sequence parallelism).
    """
    captured: list[torch.Tensor] = []

    def capture(*, data: TensorDict, student_logits: torch.Tensor | None = None, **_: Any):
        if student_logits is None:
            return _zero_loss(data)
        captured.append(student_logits)
        return {}

    engine.forward_step(micro_batch, loss_function=capture, forward_only=True)
    if len(captured) != 1:
        raise RuntimeError("the frozen model's forward did not expose its logits (fused kernels enabled?)")
    return captured[0]


class TrustRegionLogits:
    """verl engine loss function that returns the trust-region teacher's label log-probs as ``log_probs``.

    Called twice per micro-batch by ``FSDPEngineWithLMHead.forward_step``: first with the actor's logits
    (``student_logits``, shape (1, N, V)), returning ``{"log_probs": (1, N)}``, which verl gathers into its
    usual nested ``log_probs`` output; then as the loss (zero: nothing is trained).
    """

    def __init__(
        self,
        actor_engine: FSDPEngineWithLMHead,
        frozen_logits: Callable[[TensorDict], torch.Tensor],
        coef: float,
    ):
        self.actor_engine = actor_engine
        self.frozen_logits = frozen_logits
        self.coef = coef

    def __call__(self, *, data: TensorDict, student_logits: torch.Tensor | None = None, **_: Any):
        if student_logits is None:
            return _zero_loss(data)
        frozen = self.frozen_logits(data)
        # The labels in the layout of the logits (rolled, SP-sliced): recomputed by verl's own input step.
        _, output_args = self.actor_engine.prepare_model_inputs(micro_batch=data)
        labels = output_args["input_ids_rmpad_rolled"].reshape(-1)
        log_probs = trust_region_log_probs(frozen.squeeze(0), student_logits.squeeze(0), labels, self.coef)
        return {"log_probs": log_probs.unsqueeze(0)}


class CreditActorRolloutRefWorker(ActorRolloutRefWorker):
    """Adds the EMA and trust-region teachers to verl's hybrid worker; everything else is verl's."""

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
        if not isinstance(engine, FSDPEngineWithLMHead):
            raise NotImplementedError(
                f"credit.teacher=trust_region is implemented for the FSDP engines, not {type(engine).__name__}"
            )
        if self.actor.engine_config.use_fused_kernels:
            raise ValueError(
                "credit.teacher=trust_region needs full logits: set actor_rollout_ref.model.use_fused_kernels=false"
            )
        coef = tu.pop(data, key="trust_region_coef")
        if coef is None:
            raise ValueError("compute_trust_region_log_prob needs the non-tensor field trust_region_coef (tau)")
        coef = float(coef)
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
                output = self.actor.infer_batch(data)
        finally:
            self.actor.loss_fn = loss_fn
        return output.cpu() if output is not None else None

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def update_teacher_ema(self, rate: float) -> float:
        """EMA step of the ref engine towards the actor on every rank; returns the largest change."""
        if self.ref is None or self.actor is None:
            raise RuntimeError(f"the EMA teacher needs a worker with role actor_rollout_ref, got {self.role!r}")
        if is_megatron(self.actor.engine):
            check_same_layout(self.ref.engine.engine_config, self.actor.engine.engine_config)
        return ema_update_(_engine_modules(self.ref.engine), _engine_modules(self.actor.engine), rate)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_teacher(self, local_path: str, max_to_keep: int | None = None) -> None:
        """Write the teacher's full weights (HF names) to ``local_path`` from rank 0, shard by shard.

        Gathering the full tensors is collective: every rank walks the whole generator (FSDP's gathered
        state, or Megatron's bridge export across its tensor/pipeline-parallel ranks), but only rank 0 copies
        them to CPU, into files of at most ``MAX_SHARD_BYTES``, so its host memory stays bounded. For Megatron
        the model's HF config goes next to them, so that the folder loads like a Hugging Face checkpoint.
        Then rank 0 keeps only the newest ``max_to_keep`` teacher folders next to ``local_path``'s step folder.
        """
        if self.ref is None:
            raise RuntimeError(f"save_teacher needs a worker with a ref engine, got role {self.role!r}")
        params, _ = self.ref.engine.get_per_tensor_param()
        writer = ShardedSafetensorsWriter(local_path) if torch.distributed.get_rank() == 0 else None
        for name, tensor in params:
            if writer is not None:
                writer.add(name, tensor.detach().to("cpu", copy=True).contiguous())
        if writer is not None:
            writer.close()
            if is_megatron(self.ref.engine):
                self.ref.engine.model_config.hf_config.save_pretrained(local_path)
            rotate_teacher_checkpoints(os.path.dirname(os.path.dirname(os.path.abspath(local_path))), max_to_keep)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_teacher(self, local_path: str) -> None:
        """Load weights written by :meth:`save_teacher` into the ref engine (resuming an EMA run).

        Every rank reads the file and keeps its own shards: FSDP through torch's full-state-dict loader,
        Megatron through the engine's own bridge (as it loaded the initial model), which splits the full
        weights over the current TP/PP layout.
        """
        if self.ref is None:
            raise RuntimeError(f"load_teacher needs a worker with a ref engine, got role {self.role!r}")
        engine = self.ref.engine
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
        state = read_teacher_weights(local_path)
        set_model_state_dict(modules[0], state, options=StateDictOptions(full_state_dict=True))
