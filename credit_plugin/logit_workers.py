"""The worker methods of ``granularity: logit`` (a mixin of :class:`credit_plugin.workers.CreditActorRolloutRefWorker`).

- ``compute_log_prob``: verl's old log-prob pass; when the batch carries ``credit_topk`` it also records the
  student's top-k ids and log-probs per response token (SDPO's ``topk_source: student``);
- ``compute_teacher_topk``: the teacher pass at logit level, for any teacher kind: per response token the
  teacher's full-vocabulary log-probs at the given ids (or its own top-k) and at the sampled token;
- ``update_actor``: verl's actor update; when the batch carries ``credit_logit`` (the loss options) the loss is
  :class:`credit_plugin.logit_engines.LogitDistillationLoss` through the engine's logits hook.

On verl's FSDP engine the hook sees a micro-batch's full-vocabulary logits (``credit_plugin.logit_engines``); on
its Megatron engine each tensor-parallel rank's vocabulary shard (``credit_plugin.logit_megatron``: top-k and
normalisers across the shards, no rank holding more than its shard). The two share every batch field.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from tensordict import TensorDict
from verl.single_controller.base.decorator import make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

from credit_plugin.logit_engines import (
    ROW,
    STUDENT_TOPK,
    TOPK_IDS,
    LogitDistillationLoss,
    TopkRecorder,
    flat_rows,
)
from credit_plugin.logit_megatron import RECORD_FIELDS
from credit_plugin.megatron_layout import check_same_layout
from credit_plugin.trust_region_engines import engine_logits, megatron_engine_logits

TEACHER_TOPK, TEACHER_LABEL = "credit_teacher_topk", "credit_teacher_label"


def _backend(engine) -> str:
    """``fsdp`` or ``megatron``: which of verl's engines ``engine`` is (no other serves the logit level)."""
    if isinstance(engine, FSDPEngineWithLMHead):
        return "fsdp"
    try:
        from verl.workers.engine.megatron.transformer_impl import MegatronEngineWithLMHead
    except ImportError:  # megatron-core not installed: no Megatron engine can exist either
        MegatronEngineWithLMHead = None  # noqa: N806
    if MegatronEngineWithLMHead is not None and isinstance(engine, MegatronEngineWithLMHead):
        return "megatron"
    raise NotImplementedError(
        f"credit.granularity=logit is implemented for verl's FSDP and Megatron engines, not {type(engine).__name__}"
    )


def _recorder(engine, topk: int, ids_field: str | None = None, transform=None) -> TopkRecorder:
    """The top-k recorder of ``engine``'s backend (the Megatron one works on vocabulary shards)."""
    if _backend(engine) == "megatron":
        from credit_plugin.logit_megatron import MegatronTopkRecorder

        return MegatronTopkRecorder(topk, ids_field, transform)
    return TopkRecorder(topk, ids_field, transform)


def _run_recorder(worker, data: TensorDict, recorder: TopkRecorder, call) -> tuple[TensorDict | None, dict]:
    """Run ``call(data)`` (an ``infer_batch``) with ``recorder`` as ``worker``'s loss function; the records by row."""
    data[ROW] = torch.arange(len(data))
    tu.assign_non_tensor(data, compute_loss=True, distillation_use_topk=True)
    loss_fn = worker.loss_fn
    worker.loss_fn = recorder
    try:
        output = call(data)
    finally:
        worker.loss_fn = loss_fn
    return output, recorder.rows(len(data))


class LogitLevelWorkerMixin:
    """Logit-level methods on verl's ``ActorRolloutRefWorker`` (``self.actor``, ``self.ref``, ``self.loss_fn``)."""

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_log_prob(self, data: TensorDict) -> TensorDict:
        """verl's ``compute_log_prob``; with the non-tensor ``credit_topk`` (k) it also returns, per sample,
        the student's top-k ids (``credit_topk_ids``) and their log-probs (``credit_student_topk``), jagged
        with ``R_i * k`` values per row."""
        topk = tu.pop(data, key="credit_topk", default=None)
        if topk is None:
            return super().compute_log_prob(data)
        recorder = _recorder(self.actor.engine, int(topk))
        # distillation_only stays False: verl takes its own log-probs (old_log_probs) in the same forward
        tu.assign_non_tensor(data, distillation_only=False)
        output, rows = _run_recorder(self.actor, data, recorder, super().compute_log_prob)
        if output is None:
            return None
        for field in RECORD_FIELDS:  # the Megatron hook's per-position values, already in the records
            if field in output.keys():
                del output[field]
        output[TOPK_IDS] = flat_rows(rows["ids"])
        output[STUDENT_TOPK] = flat_rows(rows["topk"])
        return output

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_teacher_topk(self, data: TensorDict) -> TensorDict:
        """The teacher pass at logit level on this worker's engines.

        ``data``: the teacher batch (``compute_log_prob``'s input) plus the non-tensor ``credit_teacher``
        (``current``/``frozen``/``ema``/``trust_region``), ``credit_topk`` (k), ``trust_region_coef`` (tau, for
        ``trust_region``), ``no_lora_adapter`` (frozen model = actor without its adapter); and, for the
        student's ids, the jagged field ``credit_topk_ids`` (``R_i * k`` per row); without it the teacher's own
        top-k is taken (``topk_source: teacher``).

        Returns:
            ``credit_teacher_topk`` (``R_i * k`` per row, log-probs normalised over the full vocabulary),
            ``credit_teacher_label`` (``R_i`` per row, the sampled token's log-prob), and ``credit_topk_ids``
            when the teacher chose them.
        """
        teacher = tu.pop(data, key="credit_teacher")
        topk = int(tu.pop(data, key="credit_topk"))
        coef = tu.pop(data, key="trust_region_coef", default=None)
        no_adapter = bool(tu.pop(data, key="no_lora_adapter", default=False))
        given = TOPK_IDS in data.keys()
        ids_field = TOPK_IDS if given else None
        tu.assign_non_tensor(data, distillation_only=True)
        if self.actor is None:
            raise RuntimeError(f"the logit-level teacher pass needs the actor engine, got role {self.role!r}")
        backend = _backend(self.actor.engine)
        context = nullcontext()
        if teacher == "current":
            worker, transform = self.actor, None
        elif teacher in ("frozen", "ema"):
            if self.ref is not None:
                worker, transform = self.ref, None
                if _backend(self.ref.engine) != backend:
                    raise RuntimeError(f"the ref engine is not the actor's ({backend}): one backend for both")
            elif no_adapter:
                worker, transform = self.actor, None
                tu.assign_non_tensor(data, no_lora_adapter=True)
            else:
                raise RuntimeError(f"credit.teacher={teacher} at logit level needs a ref engine on this worker")
        elif teacher == "trust_region":
            if coef is None:
                raise ValueError("the trust-region teacher needs the non-tensor field trust_region_coef (tau)")
            worker, transform = self.actor, self._trust_region_transform(float(coef))
            if self.ref is not None:
                context = self.ref.engine.eval_mode()
        else:
            raise ValueError(f"unknown credit.teacher {teacher!r}")
        with context:
            recorder = _recorder(worker.engine, topk, ids_field, transform)
            output, rows = _run_recorder(worker, data, recorder, worker.infer_batch)
        if output is None:
            return None
        result = {TEACHER_TOPK: flat_rows(rows["topk"]), TEACHER_LABEL: flat_rows(rows["label"])}
        if not given:
            result[TOPK_IDS] = flat_rows(rows["ids"])
        return tu.get_tensordict(result)

    def _trust_region_transform(self, coef: float):
        """``(1 - tau) * z_frozen + tau * z_actor`` of a micro-batch, in float32 (one micro-batch's logits; on
        Megatron this rank's vocabulary shard of both, the mix being elementwise)."""
        engine = self.actor.engine
        megatron = _backend(engine) == "megatron"
        logits_of = megatron_engine_logits if megatron else engine_logits
        if self.ref is None and (megatron or not hasattr(engine.module, "disable_adapter")):
            raise RuntimeError(
                "the trust-region teacher needs a frozen model: a ref engine (role actor_rollout_ref), or on FSDP "
                f"a LoRA actor; this worker has role {self.role!r}"
            )
        if megatron:
            # the mix is elementwise on each rank's shard: the frozen model's shard must be the actor's
            check_same_layout(self.ref.engine.engine_config, engine.engine_config, teacher="trust_region")

        def frozen(micro_batch: TensorDict) -> torch.Tensor:
            if self.ref is not None:
                return logits_of(self.ref.engine, micro_batch)
            with engine.disable_adapter():
                return logits_of(engine, micro_batch)

        def mix(micro_batch: TensorDict, logits: torch.Tensor) -> torch.Tensor:
            return torch.lerp(frozen(micro_batch).float(), logits.float(), coef)

        return mix

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def update_actor(self, data: TensorDict) -> TensorDict:
        """verl's ``update_actor``; with the non-tensor ``credit_logit`` (the loss options as JSON) the actor's
        loss is :class:`LogitDistillationLoss`, fed by the engine's logits hook."""
        options = tu.pop(data, key="credit_logit", default=None)
        if options is None:
            return super().update_actor(data)
        loss_class = LogitDistillationLoss
        if _backend(self.actor.engine) == "megatron":
            from credit_plugin.logit_megatron import MegatronLogitDistillationLoss as loss_class
        tu.assign_non_tensor(data, distillation_use_topk=True, distillation_only=False)
        loss_fn = self.actor.loss_fn
        self.actor.loss_fn = loss_class.from_json(self.loss_fn, options)
        try:
            return super().update_actor(data)
        finally:
            self.actor.loss_fn = loss_fn
