"""Which Megatron layouts the teachers that work shard by shard accept: checks on verl's ``McoreEngineConfig`` (or
the ``actor_rollout_ref.*.megatron`` config section), used at start-up and again in the workers. Free of verl and
megatron-core imports."""

from __future__ import annotations

# The fields of verl's ``McoreEngineConfig`` that decide which shard of which parameter a rank holds.
MEGATRON_LAYOUT = (
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
    "virtual_pipeline_model_parallel_size",
    "context_parallel_size",
    "expert_model_parallel_size",
    "expert_tensor_parallel_size",
)


# Why each teacher needs the ref engine sharded like the actor.
_SAME_LAYOUT_REASONS = {
    "ema": "the EMA runs shard by shard",
    "trust_region": "the two models' logits mix vocabulary shard by vocabulary shard",
}


def check_same_layout(teacher_config, student_config, teacher: str = "ema") -> None:
    """Raise unless the ref and actor Megatron engine configs shard the same way (:data:`MEGATRON_LAYOUT`).

    Args:
        teacher_config, student_config: the ref's and the actor's ``McoreEngineConfig`` or ``megatron`` section.
        teacher: the ``credit.teacher`` that needs it (a key of :data:`_SAME_LAYOUT_REASONS`), for the message.
    """
    differing = [
        f"{field}: actor {student_config.get(field)} vs ref {teacher_config.get(field)}"
        for field in MEGATRON_LAYOUT
        if teacher_config.get(field) != student_config.get(field)
    ]
    if differing:
        raise ValueError(
            f"credit.teacher={teacher} needs the ref engine sharded like the actor ({_SAME_LAYOUT_REASONS[teacher]}); "
            "set actor_rollout_ref.ref.megatron.* equal to actor_rollout_ref.actor.megatron.*: " + "; ".join(differing)
        )


def check_trust_region_pipeline(actor_config) -> None:
    """Raise unless the Megatron actor runs without pipeline parallelism, which the trust-region mix needs.

    Args:
        actor_config: the actor's ``McoreEngineConfig`` or ``actor_rollout_ref.actor.megatron`` section.
    """
    stages = actor_config.get("pipeline_model_parallel_size") or 1
    if stages > 1:
        raise ValueError(
            "credit.teacher=trust_region on Megatron needs actor_rollout_ref.actor.megatron."
            f"pipeline_model_parallel_size=1, got {stages}: the frozen model runs inside the actor's last "
            "pipeline stage, on the same micro-batch, where the other stages would have to take part too; "
            "use tensor parallelism, or credit.teacher=ema"
        )
