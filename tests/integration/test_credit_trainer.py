"""The CREDIT trainer's teacher pass and advantages on a real batch stored in TransferQueue, scored by
verl's own hybrid actor/rollout/ref worker on CPU (the worker the trainer starts for a ref teacher), against
the formula computed with plain transformers forwards."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import ray
import torch
import transfer_queue as tq
import transformers
from conftest import label_log_probs, load_model, response_logits
from safetensors.torch import load_file, save_file
from transfer_queue import KVBatchMeta
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl.workers.utils.padding import response_from_nested

from credit_plugin.config import CreditConfig
from credit_plugin.dev.cpu.workers import (
    build_log_prob_batch,
    compose_cpu_config,
    create_worker_groups,
    ray_init_kwargs,
)
from credit_plugin.diagnostics import AdvantageDriftWatch
from credit_plugin.negatives import negatives_generator, sample_negatives
from credit_plugin.trainer import CreditTrainer
from credit_plugin.workers import CreditActorRolloutRefWorker

pytestmark = [pytest.mark.slow, pytest.mark.ray]

STEP, SEED, K = 3, 11, 2
TAU = 0.3  # trust-region mix, far from both ends so that a wrong mix shows
QUESTIONS = ["What is 2 + 3?", "Reverse the word 'cat'.", "Sort the digits 3 1 2."]
# (uid index, response text, score, feedback)
SAMPLES = [
    (0, "Answer: 5", 1.0, ""),
    (0, "Answer: 6", 0.0, "Your answer 6 is wrong: 2 + 3 = 5."),
    (1, "Answer: tac", 0.0, "Wrong: the letters of 'cat' reversed give 'tac'... check the order."),
    (1, "Answer: act", 0.0, "Wrong: 'act' is not 'cat' reversed."),
    (2, "Answer: 321", 0.0, ""),
    (2, "Answer: 312", 0.0, None),
]
# Samples 1-3 have a teacher context; of the others only the first's plain row is scored (the sanity gap).
CONTEXT_SAMPLES = 3
TEACHER_ROWS = (1 + K) * CONTEXT_SAMPLES + 1
STUDENT_ROWS = K * CONTEXT_SAMPLES


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture(scope="module")
def stack(model_dir):
    """Local Ray, TransferQueue and one ``actor_rollout_ref`` worker group (world size 1) on the CPU platform."""
    config = compose_cpu_config(
        str(model_dir),
        config_name="credit_trainer",
        overrides=[
            "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
            "actor_rollout_ref.rollout.name=hf_cpu",
            "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
            "actor_rollout_ref.rollout.calculate_log_probs=false",
            "actor_rollout_ref.rollout.temperature=1.0",
            "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
            "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=256",
            "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=true",
            "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=256",
            f"credit.num_negatives={K}",
            f"credit.negative_seed={SEED}",
            f"credit.teacher_update_rate={TAU}",
        ],
    )
    ray.init(**{**ray_init_kwargs(1), "num_cpus": 16})
    config.transfer_queue.enable = True
    tq.init(config.transfer_queue)
    groups = create_worker_groups(config, roles=("actor_rollout_ref",), worker_cls=CreditActorRolloutRefWorker)
    yield config, groups["actor_rollout_ref"]
    tq.close()
    ray.shutdown()


def _chat(tokenizer, content: str) -> list[int]:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True, return_dict=False
    )


def _store_batch(tokenizer, prefix: str) -> KVBatchMeta:
    """Rows laid out as verl's agent loop puts them into TransferQueue (plus rm_scores from the reward step)."""
    keys, fields, tags = [], [], []
    for index, (group, text, score, feedback) in enumerate(SAMPLES):
        prompt = torch.tensor(_chat(tokenizer, QUESTIONS[group]))
        response = torch.tensor(tokenizer.encode(text) + [tokenizer.convert_tokens_to_ids("<|im_end|>")])
        input_ids = torch.cat([prompt, response])
        rm_scores = torch.zeros(len(response))
        rm_scores[-1] = score
        info = {} if feedback is None else {"feedback": feedback, "acc": score > 0}
        uid = f"{prefix}{group}"
        fields.append(
            {
                "uid": uid,
                "prompts": prompt,
                "responses": response,
                "response_mask": torch.ones(len(response), dtype=torch.int64),
                "loss_mask": torch.ones(len(response), dtype=torch.int64),
                "input_ids": input_ids,
                "position_ids": torch.arange(len(input_ids)),
                "rm_scores": rm_scores,
                "raw_prompt": [{"role": "user", "content": QUESTIONS[group]}],
                "extra_fields": {"reward_extra_info": info},
            }
        )
        keys.append(f"{uid}_{index}_0")
        tags.append({"status": "success", "seq_len": len(input_ids)})
    tq.kv_batch_put(keys=keys, partition_id="train", fields=list_of_dict_to_tensordict(fields), tags=tags)
    return KVBatchMeta(partition_id="train", keys=keys, tags=tags)


def _trainer(config, worker_group, tokenizer, teacher: str) -> CreditTrainer:
    """The trainer with its worker group in place, as ``PPOTrainer._setup`` leaves it for a ref teacher."""
    trainer = CreditTrainer.__new__(CreditTrainer)
    config.credit.teacher = teacher
    trainer.config = config
    trainer.credit = CreditConfig.from_dict(config.credit)
    trainer.tokenizer = tokenizer
    trainer.actor_rollout_wg = worker_group
    trainer.ref_policy_wg = worker_group
    trainer.global_steps = STEP
    trainer.timing_raw = {}
    trainer.advantage_watch = AdvantageDriftWatch()
    return trainer


def _scaled(model: transformers.PreTrainedModel, factor: float) -> dict[str, torch.Tensor]:
    """A different model of the same shape (every weight times ``factor``), as a state dict of own copies."""
    with torch.no_grad():
        return {name: tensor.clone() * factor for name, tensor in model.state_dict().items()}


def _expected_advantages(
    model_dir, tokenizer, config: CreditConfig, uids: np.ndarray, teacher_logits=None
) -> list[torch.Tensor]:
    """SDPO's teacher contexts and CREDIT's negatives rebuilt by hand, scored with plain transformers.

    ``teacher_logits(prompt_ids, response_ids)`` gives the teacher's (R, V) logits; by default the actor's own.
    """
    model = load_model(model_dir)
    negatives = sample_negatives(uids, K, negatives_generator(SEED, STEP))
    teacher_logits = teacher_logits or (lambda prompt, response: response_logits(model, prompt, response))

    def response_log_probs(prompt_ids: list[int], response_ids: list[int]) -> torch.Tensor:
        return label_log_probs(teacher_logits(prompt_ids, response_ids), response_ids)

    expected = []
    for index, (group, text, _, feedback) in enumerate(SAMPLES):
        response = tokenizer.encode(text) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
        student = label_log_probs(response_logits(model, _chat(tokenizer, QUESTIONS[group]), response), response)
        solution = "Answer: 5" if index == 1 else None  # the only success, never its own demonstration
        use_feedback = bool(feedback) and solution is None
        if solution is None and not use_feedback:
            expected.append(torch.zeros(len(response), dtype=torch.float64))
            continue

        solution_block = config.solution_template.format(successful_previous_attempt=solution) if solution else ""
        feedback_block = config.feedback_template.format(feedback_raw=feedback) if use_feedback else ""
        questions = [QUESTIONS[group]] + [QUESTIONS[SAMPLES[int(row)][0]] for row in negatives[index]]
        scores = [
            response_log_probs(
                _chat(
                    tokenizer,
                    config.reprompt_template.format(prompt=question, solution=solution_block, feedback=feedback_block),
                ),
                response,
            )
            for question in questions
        ]
        teacher, contrast = scores[0], torch.stack(scores[1:])
        # the contrast term of credit.contrast_form (docs/method.md), written out independently of rewards.py
        swapped_student = torch.stack(
            [
                label_log_probs(response_logits(model, _chat(tokenizer, question), response), response)
                for question in questions[1:]
            ]
        )
        student_part = {"reward": student, "logprob": 0.0, "pmi": swapped_student.mean(0)}[config.contrast_form]
        subtracted = contrast.mean(0) - student_part
        expected.append(teacher - student - config.contrast_coef * subtracted)
    return expected


def _run_compute_advantage(trainer: CreditTrainer, worker_group, methods: tuple[str, ...], prefix: str):
    """Old log-probs then ``_compute_advantage`` on a freshly stored batch; returns (advantages, metrics,
    {method: rows sent per call} for each of the worker group's ``methods`` during ``_compute_advantage``)."""
    batch = _store_batch(trainer.tokenizer, prefix=prefix)
    calls: dict[str, list[int]] = {method: [] for method in methods}
    originals = {method: getattr(worker_group, method) for method in methods}

    def counted(method: str):
        def call(data):
            calls[method].append(len(data))
            return originals[method](data)

        return call

    metrics: dict = {}
    trainer._compute_old_log_prob(batch, metrics)
    for method in methods:
        setattr(worker_group, method, counted(method))
    try:
        trainer._compute_advantage(batch, metrics)
    finally:
        for method, original in originals.items():
            setattr(worker_group, method, original)
    stored = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=["advantages"])
    return stored["advantages"].unbind(), metrics, calls


def _assert_rows_close(got_rows, expected, loss_scale: float) -> None:
    """``loss_scale``: the trainer scales the advantages so that verl's loss averages over samples with a
    teacher context (SDPO's normalisation): all response tokens / those of samples with a context."""
    with_context = [want for want in expected if want.abs().sum() > 0]
    tokens = sum(len(want) for want in expected) / sum(len(want) for want in with_context)
    assert loss_scale == pytest.approx(tokens)
    for row, (got, want) in enumerate(zip(got_rows, expected, strict=True)):
        torch.testing.assert_close(got.double(), want * loss_scale, rtol=0, atol=1e-4, msg=f"sample {row}")


@pytest.mark.parametrize("teacher", ["frozen", "current"])
def test_compute_advantage_equals_the_credit_formula(stack, model_dir, tokenizer, teacher):
    config, worker_group = stack
    trainer = _trainer(config, worker_group, tokenizer, teacher)
    method = "compute_log_prob" if teacher == "current" else "compute_ref_log_prob"
    advantages, metrics, calls = _run_compute_advantage(trainer, worker_group, (method,), prefix=f"{teacher}-")

    assert calls[method] == [TEACHER_ROWS], "all 1+K variants of every sample with a context in one worker call"
    uids = np.array([f"{teacher}-{group}" for group, *_ in SAMPLES], dtype=object)
    expected = _expected_advantages(model_dir, tokenizer, trainer.credit, uids)
    _assert_rows_close(advantages, expected, metrics["credit/loss_scale"])
    assert metrics["credit/teacher/context_fraction"] == pytest.approx(3 / 6)
    assert set(metrics) >= {"credit/pmi_mean", "credit/baseline_mean", "credit/contrast_gap_mean"}
    # Rows without a teacher context were scored under their original prompt by unchanged weights.
    assert metrics["credit/teacher_sanity_gap"] < 1e-4


@pytest.mark.parametrize("teacher", ["frozen", "current"])
def test_pmi_form_subtracts_the_policys_scores_under_the_swapped_prompts(stack, model_dir, tokenizer, teacher):
    """``contrast_form: pmi``: ``(T - S) - lambda * (g - S')``, with ``S'`` the policy's scores of the response
    under the K swapped rollout prompts, from one more actor call of K rows per sample."""
    config, worker_group = stack
    config.credit.contrast_form = "pmi"
    try:
        trainer = _trainer(config, worker_group, tokenizer, teacher)
        methods = ("compute_log_prob",) if teacher == "current" else ("compute_ref_log_prob", "compute_log_prob")
        advantages, metrics, calls = _run_compute_advantage(trainer, worker_group, methods, prefix=f"pmi-{teacher}-")
    finally:
        config.credit.contrast_form = CreditConfig().contrast_form

    teacher_calls = [TEACHER_ROWS] if teacher == "current" else []
    assert calls["compute_log_prob"] == [*teacher_calls, STUDENT_ROWS]
    if teacher != "current":
        assert calls["compute_ref_log_prob"] == [TEACHER_ROWS]
    uids = np.array([f"pmi-{teacher}-{group}" for group, *_ in SAMPLES], dtype=object)
    expected = _expected_advantages(model_dir, tokenizer, trainer.credit, uids)
    _assert_rows_close(advantages, expected, metrics["credit/loss_scale"])


def test_token_records_hold_the_steps_rewards_texts_and_generic_credit_metrics(stack, model_dir, tokenizer, tmp_path):
    """``credit.token_records``: the trainer's hook writes the chosen samples' per-token scores, equal to the
    formula rebuilt with transformers, with the prompt, feedback and sibling solution the teacher saw."""
    config, worker_group = stack
    trainer = _trainer(config, worker_group, tokenizer, "current")
    trainer.credit = dataclasses.replace(trainer.credit, token_records=4, token_records_dir=str(tmp_path / "run"))
    _, metrics, _ = _run_compute_advantage(trainer, worker_group, (), prefix="records-")

    uids = np.array([f"records-{group}" for group, *_ in SAMPLES], dtype=object)
    expected = _expected_advantages(model_dir, tokenizer, trainer.credit, uids)
    lines = (tmp_path / "run/token_records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    # the three samples with a teacher context (rows 1, 2, 3), then one without (row 0, first of its kind)
    assert [record["row"] for record in records] == [1, 2, 3, 0]
    for record in records:
        group, text, score, feedback = SAMPLES[record["row"]]
        assert record["step"] == STEP and record["outcome"] == score
        assert record["prompt"] == f"user: {QUESTIONS[group]}"
        assert "".join(record["tokens"]) == text + "<|im_end|>"
        want = expected[record["row"]]
        if record["has_context"]:
            torch.testing.assert_close(torch.tensor(record["credit"]).double(), want, rtol=0, atol=1e-4)
            torch.testing.assert_close(torch.tensor(record["advantage"]).double(), want, rtol=0, atol=1e-4)
            sdpo = torch.tensor(record["teacher_log_probs"]) - torch.tensor(record["student_log_probs"])
            torch.testing.assert_close(torch.tensor(record["sdpo"]), sdpo, rtol=0, atol=1e-4)
        else:
            assert not any(record["sdpo"]) and not any(record["credit"])
    by_row = {record["row"]: record for record in records}
    assert by_row[1]["solution"] == "Answer: 5" and by_row[1]["feedback"] is None  # a sibling solved it
    assert by_row[2]["feedback"] == SAMPLES[2][3] and by_row[2]["solution"] is None
    assert -1 <= metrics["credit/advantage_correlation"] <= 1 and "credit/generic_share" in metrics


def test_trust_region_teacher_mixes_frozen_and_current_logits(stack, model_dir, tokenizer, tmp_path):
    """``trust_region``: ``log_softmax((1 - tau) * z_frozen + tau * z_current)``, with a frozen model that differs
    from the actor (loaded into the ref engine), all 1+K variants in one call of the worker's own method."""
    config, worker_group = stack
    actor = load_model(model_dir)
    frozen = load_model(model_dir)
    frozen_weights = _scaled(actor, 1.3)
    frozen.load_state_dict(frozen_weights)
    (tmp_path / "frozen").mkdir()
    save_file(frozen_weights, tmp_path / "frozen/model.safetensors")
    (tmp_path / "initial").mkdir()
    save_file(_scaled(actor, 1.0), tmp_path / "initial/model.safetensors")

    trainer = _trainer(config, worker_group, tokenizer, "trust_region")
    worker_group.load_teacher(str(tmp_path / "frozen"))
    try:
        advantages, metrics, calls = _run_compute_advantage(
            trainer, worker_group, ("compute_trust_region_log_prob",), prefix="trust-"
        )
    finally:
        worker_group.load_teacher(str(tmp_path / "initial"))

    assert calls["compute_trust_region_log_prob"] == [TEACHER_ROWS], "all 1+K variants in one call"

    def mixed(prompt, response):
        return torch.lerp(response_logits(frozen, prompt, response), response_logits(actor, prompt, response), TAU)

    uids = np.array([f"trust-{group}" for group, *_ in SAMPLES], dtype=object)
    expected = _expected_advantages(model_dir, tokenizer, trainer.credit, uids, mixed)
    _assert_rows_close(advantages, expected, metrics["credit/loss_scale"])
    # Plain rows show the mixed teacher's drift from the actor: a test that the frozen model took part.
    assert metrics["credit/teacher_sanity_gap"] > 1e-3


def test_trust_region_without_its_coefficient_is_a_clear_error(stack, tokenizer):
    _, worker_group = stack
    batch = build_log_prob_batch([_chat(tokenizer, QUESTIONS[0])], [tokenizer.encode(" Answer: 5")])
    with pytest.raises(ray.exceptions.RayTaskError, match="trust_region_coef"):
        worker_group.compute_trust_region_log_prob(batch)


def test_teacher_weights_save_and_reload_into_the_ref_engine(stack, model_dir, tokenizer, tmp_path):
    """An EMA run resumes with its teacher: saved full weights load back into the sharded ref engine."""
    _, ref = stack
    ref.save_teacher(str(tmp_path / "saved"))
    saved = load_file(tmp_path / "saved/model.safetensors")
    model = load_model(model_dir)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=0)

    moved = _scaled(model, 1.5)
    model.load_state_dict(moved)
    (tmp_path / "moved").mkdir()
    save_file(moved, tmp_path / "moved/model.safetensors")
    prompt, response = _chat(tokenizer, QUESTIONS[0]), tokenizer.encode(" Answer: 5")
    try:
        ref.load_teacher(str(tmp_path / "moved"))
        out = ref.compute_ref_log_prob(build_log_prob_batch([prompt], [response]))
    finally:
        ref.load_teacher(str(tmp_path / "saved"))
    got = response_from_nested(out["log_probs"], build_log_prob_batch([prompt], [response])["response_mask"])[0]
    want = label_log_probs(response_logits(model, prompt, response), response)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)
