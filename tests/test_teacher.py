"""Teacher inputs: SDPO reprompts and CREDIT contrast variants, on the real Qwen tokenizer and chat template."""

from __future__ import annotations

import pytest
import torch
from conftest import response_log_probs
from verl.protocol import BatchData
from verl.utils import tensordict_utils as tu
from verl.workers.engine.utils import postprocess_batch_func, prepare_micro_batches
from verl.workers.utils.padding import no_padding_2_padding, response_from_nested

from credit_plugin.config import CreditConfig
from credit_plugin.teacher import (
    build_student_contrast_batch,
    build_teacher_batch,
    fit_token_budget,
    remove_thinking,
    select_demonstrations,
    split_student_log_probs,
    split_teacher_log_probs,
)

SYSTEM = "You are a careful assistant."
THINKING_OFF = {"enable_thinking": False}


def chat_ids(tokenizer, messages, **kwargs) -> list[int]:
    """Rollout's rendering: the chat template with the generation prompt, tokenised by the template call."""
    return list(
        tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False, **kwargs)
    )


def question(i: int) -> str:
    return f"Question {i}: what is {i} times {i + 3}?"


def conversation(content: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]


def make_batch(tokenizer, uids, scores, feedback, texts=None, **overrides):
    """A batch whose prompt is fixed per uid (as in verl: all samples of a uid share the prompt)."""
    prompt_of = {uid: question(n) for n, uid in enumerate(dict.fromkeys(uids))}
    texts = texts or [f"My answer is {n}." for n in range(len(uids))]
    responses = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    masks = [[1] * len(r) for r in responses]
    kwargs = dict(
        raw_prompt=[conversation(prompt_of[u]) for u in uids],
        responses=responses,
        response_mask=masks,
        uid=list(uids),
        scores=scores,
        feedback=feedback,
        response_text=texts,
        tokenizer=tokenizer,
        config=CreditConfig(num_negatives=1),
        apply_chat_template_kwargs=THINKING_OFF,
        generator=torch.Generator().manual_seed(0),
    )
    kwargs.update(overrides)
    return kwargs


def reprompt(prompt: str, solution: str | None = None, feedback: str | None = None) -> str:
    """SDPO's default reprompt, written out literally (independent of the config's template strings)."""
    text = prompt
    if solution is not None:
        text += f"\nCorrect solution:\n\n{solution}\n\n"
    if feedback is not None:
        text += f"\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback}\n\n"
    return text + "\n\nCorrectly solve the original question."


def rows(batch, key):
    return [row.tolist() for row in batch.data[key].unbind(0)]


def variant_prompt(batch, key_rows, variant, sample):
    row = int(batch.row_index[variant, sample])
    assert row >= 0, f"variant {variant} of sample {sample} was not scored"
    return key_rows[row]


# --- context selection ------------------------------------------------------------------------------


def test_remove_thinking_drops_blocks_and_an_orphan_reasoning_prefix():
    assert remove_thinking("<think>a\nb</think>\n\nThe answer is 4.") == "The answer is 4."
    assert remove_thinking("x <think>1</think> y <think>2</think>z") == "x y z"
    assert remove_thinking("reasoning started in the prompt\n</think>\n\nFinal: 4") == "Final: 4"
    assert remove_thinking("no thinking here") == "no thinking here"


def test_demonstration_is_first_successful_sibling_and_never_self():
    uids = ["a", "b", "a", "a", "b", "c"]
    scores = torch.tensor([0.0, 1.0, 1.0, 0.7, 0.2, 1.0])
    # a: rows 0, 2, 3 (2 and 3 succeed); b: rows 1, 4 (1 succeeds); c: row 5 alone and successful
    assert select_demonstrations(uids, scores, 0.5, exclude_self=True).tolist() == [2, -1, 3, 2, 1, -1]
    assert select_demonstrations(uids, scores, 0.5, exclude_self=False).tolist() == [2, 1, 2, 2, 1, 5]
    # the threshold is inclusive
    assert select_demonstrations(uids, scores, 0.7, exclude_self=True).tolist() == [2, -1, 3, 2, 1, -1]
    assert select_demonstrations(uids, scores, 0.71, exclude_self=True).tolist() == [2, -1, -1, 2, 1, -1]


# --- exact token layout -------------------------------------------------------------------------------


def test_exact_layout_prompt_is_the_chat_rendering_and_response_ids_are_unchanged(tokenizer):
    texts = ["<think>scratch work</think>\n\nIt is 4.", "It is 5.", "It is 6.", "It is 7."]
    kwargs = make_batch(
        tokenizer, ["a", "a", "b", "b"], [1.0, 0.0, 0.0, 0.0], ["", "off by one", "", "wrong unit"], texts=texts
    )
    batch = build_teacher_batch(**kwargs)
    prompts, responses, input_ids = rows(batch, "prompts"), rows(batch, "responses"), rows(batch, "input_ids")
    expected_contents = [
        question(0),  # its own success is excluded and a has no other success, feedback blank -> no context
        reprompt(question(0), solution="It is 4."),  # thinking removed; feedback dropped (solution exists)
        question(1),  # nothing
        reprompt(question(1), feedback="wrong unit"),
    ]
    assert batch.self_distillation_mask.tolist() == [0.0, 1.0, 0.0, 1.0]
    # Sample 2 has no context and is not the first such (sample 0, the sanity row): none of its rows is sent.
    assert batch.row_index.tolist() == [[0, 1, -1, 2], [-1, 3, -1, 4]] and batch.num_rows == 5
    for i, content in enumerate(expected_contents):
        if i == 2:
            continue
        expected = chat_ids(tokenizer, conversation(content), **THINKING_OFF)
        row = int(batch.row_index[0, i])
        assert prompts[row] == expected, f"sample {i}"
        assert tokenizer.decode(expected).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        assert responses[row] == kwargs["responses"][i]
        assert input_ids[row] == expected + kwargs["responses"][i]
    for row, ids in enumerate(input_ids):
        assert batch.data["position_ids"][row].tolist() == list(range(len(ids)))
    assert rows(batch, "response_mask") == rows(batch, "loss_mask")
    assert rows(batch, "response_mask")[:3] == [kwargs["response_mask"][i] for i in (0, 1, 3)]
    assert tu.get(batch.data, "temperature") == 1.0 and tu.get(batch.data, "compute_loss") is False
    assert tu.get(batch.data, "max_seq_len") == max(len(ids) for ids in input_ids)


def test_system_message_kept_and_chat_template_kwargs_reach_the_template(tokenizer):
    kwargs = make_batch(tokenizer, ["a", "a", "b"], [1.0, 0.0, 0.0], None, apply_chat_template_kwargs={})
    batch = build_teacher_batch(**kwargs)
    expected = chat_ids(tokenizer, conversation(reprompt(question(0), solution="My answer is 0.")))
    assert rows(batch, "prompts")[1] == expected
    assert expected != chat_ids(
        tokenizer, conversation(reprompt(question(0), solution="My answer is 0.")), **THINKING_OFF
    )
    assert tokenizer.decode(expected).startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>")


def test_no_context_rows_use_the_rollout_prompt_ids_when_given(tokenizer):
    kwargs = make_batch(tokenizer, ["a", "a", "b", "b"], [1.0, 0.0, 0.0, 0.0], None)
    rollout = [chat_ids(tokenizer, messages, **THINKING_OFF) + [0] for messages in kwargs["raw_prompt"]]
    batch = build_teacher_batch(**kwargs, prompts=rollout)
    prompts = rows(batch, "prompts")
    assert batch.self_distillation_mask.tolist() == [0.0, 1.0, 0.0, 0.0]
    # the plain row of the first sample without context (the sanity row) is its rollout prompt; the other
    # samples without context are not scored
    assert variant_prompt(batch, prompts, 0, 0) == rollout[0]
    assert variant_prompt(batch, prompts, 0, 1) != rollout[1]
    assert batch.row_index[:, 2:].eq(-1).all() and batch.row_index[1:, 0].eq(-1).all()


# --- negatives ----------------------------------------------------------------------------------------


def test_contrast_rows_swap_only_the_question_for_that_of_another_uid(tokenizer):
    uids = ["a", "a", "b", "b", "c", "c", "d", "d"]
    scores = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    feedback = ["", "", "too long", "", "", "", "", ""]
    kwargs = make_batch(tokenizer, uids, scores, feedback, config=CreditConfig(num_negatives=3))
    batch = build_teacher_batch(**kwargs)
    with_context = int(batch.self_distillation_mask.sum())
    assert batch.negatives.shape == (8, 3) and batch.num_rows == 4 * with_context + 1 and with_context == 3
    questions = {u: question(n) for n, u in enumerate(dict.fromkeys(uids))}
    prompts, responses = rows(batch, "prompts"), rows(batch, "responses")
    for i in range(8):
        negative_uids = [uids[j] for j in batch.negatives[i].tolist()]
        assert uids[i] not in negative_uids and len(set(negative_uids)) == 3
        solution = {1: "My answer is 0.", 4: "My answer is 5."}.get(i)
        fb = "too long" if i == 2 else None
        for k, j in enumerate(batch.negatives[i].tolist()):
            if solution is None and fb is None:
                assert batch.row_index[k + 1, i] == -1, "no context: the contrast variants are not scored"
                continue
            content = reprompt(questions[uids[j]], solution=solution, feedback=fb)
            assert variant_prompt(batch, prompts, k + 1, i) == chat_ids(
                tokenizer, conversation(content), **THINKING_OFF
            ), f"sample {i} negative {k}"
            assert variant_prompt(batch, responses, k + 1, i) == kwargs["responses"][i]


def test_negatives_follow_uids_not_positions(tokenizer):
    uids = ["a", "a", "b", "b", "c", "c"]
    kwargs = make_batch(tokenizer, uids, [0.0] * 6, ["fb"] * 6)
    order = [3, 0, 5, 1, 4, 2]
    shuffled = {
        key: [value[i] for i in order] if isinstance(value, list) else value
        for key, value in make_batch(tokenizer, uids, [0.0] * 6, ["fb"] * 6).items()
    }
    for batch, uid in ((build_teacher_batch(**kwargs), uids), (build_teacher_batch(**shuffled), shuffled["uid"])):
        prompts = rows(batch, "prompts")
        for i in range(6):
            j = batch.negatives[i, 0].item()
            assert uid[j] != uid[i]
            question_of_j = kwargs["raw_prompt"][uids.index(uid[j])][1]["content"]
            expected = chat_ids(tokenizer, conversation(reprompt(question_of_j, feedback="fb")), **THINKING_OFF)
            assert variant_prompt(batch, prompts, 1, i) == expected


def test_sdpo_scores_no_negatives(tokenizer):
    kwargs = make_batch(tokenizer, ["a", "a"], [1.0, 0.0], None, config=CreditConfig(contrast_coef=0.0))
    batch = build_teacher_batch(**kwargs)  # one prompt group is enough without the contrast
    assert batch.negatives.shape == (2, 0) and batch.num_rows == 2
    lengths = batch.data["input_ids"].offsets().diff().tolist()
    log_probs = torch.nested.as_nested_tensor([torch.zeros(n) for n in lengths], layout=torch.jagged)
    teacher, contrast = split_teacher_log_probs(log_probs, batch)
    assert teacher.shape == (2, batch.response_mask.shape[1]) and contrast.shape == (2, 0, teacher.shape[1])


@pytest.mark.parametrize("configured", [None, 1, 10_000])
def test_token_budget_fits_the_longest_teacher_row(tokenizer, configured):
    batch = build_teacher_batch(
        **make_batch(tokenizer, ["a", "a"], [1.0, 0.0], None, config=CreditConfig(contrast_coef=0.0))
    )
    longest = max(batch.data["input_ids"].offsets().diff().tolist())
    assert fit_token_budget(batch.data, configured) is batch.data
    assert tu.get(batch.data, key="max_token_len_per_gpu") == max(configured or 0, longest)


# --- feedback options -----------------------------------------------------------------------------------


SOLVED_BY_1 = reprompt(question(0), solution="My answer is 1.")


@pytest.mark.parametrize(
    ("options", "expected_contents", "mask"),
    [
        ({}, [SOLVED_BY_1, question(0), question(1), reprompt(question(1), feedback="b is wrong")], [1, 0, 0, 1]),
        (
            {"feedback_only_without_solution": False},
            [reprompt(question(0), solution="My answer is 1.", feedback="fix it"), question(0), question(1), None],
            [1, 0, 0, 1],
        ),
        ({"include_environment_feedback": False}, [SOLVED_BY_1, question(0), question(1), question(1)], [1, 0, 0, 0]),
        ({"dont_reprompt_on_self_success": False}, [SOLVED_BY_1, SOLVED_BY_1, question(1), None], [1, 1, 0, 1]),
    ],
)
def test_feedback_and_solution_options(tokenizer, options, expected_contents, mask):
    # a: row 0 failed with feedback, row 1 solved (its own success); b: row 2 failed with blank feedback,
    # row 3 failed with feedback
    kwargs = make_batch(
        tokenizer,
        ["a", "a", "b", "b"],
        [0.0, 1.0, 0.0, 0.0],
        ["fix it", "", "   ", "b is wrong"],
        config=CreditConfig(num_negatives=1, **options),
    )
    batch = build_teacher_batch(**kwargs)
    assert batch.self_distillation_mask.tolist() == [float(m) for m in mask]
    prompts = rows(batch, "prompts")
    for i, content in enumerate(expected_contents):
        if batch.row_index[0, i] < 0:
            assert not mask[i], f"sample {i} has a context and was not scored"
        elif content is not None:
            assert variant_prompt(batch, prompts, 0, i) == chat_ids(tokenizer, conversation(content), **THINKING_OFF), (
                f"sample {i}"
            )


def test_metrics_report_context_solution_and_feedback_fractions(tokenizer):
    kwargs = make_batch(tokenizer, ["a", "a", "b", "b"], [0.0, 1.0, 0.0, 0.0], ["x", "", "", "y"])
    metrics = build_teacher_batch(**kwargs).metrics()
    assert metrics["credit/teacher/context_fraction"] == 0.5
    assert metrics["credit/teacher/solution_fraction"] == 0.25
    assert metrics["credit/teacher/feedback_fraction"] == 0.25
    assert metrics["credit/teacher/feedback_available_fraction"] == 0.5
    assert metrics["credit/teacher/truncated_fraction"] == 0.0


def test_a_sample_whose_scoring_failed_gets_no_context_and_no_teacher_rows(tokenizer):
    # sample 0 has feedback and a successful sibling, so it would get both; its reward failed, so it gets neither
    kwargs = make_batch(tokenizer, ["a", "a", "b", "b"], [0.0, 1.0, 0.0, 0.0], ["x", "", "", "y"])
    plain = build_teacher_batch(**kwargs)
    failed = build_teacher_batch(**kwargs, excluded=[True, False, False, False])
    assert plain.self_distillation_mask.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert failed.self_distillation_mask.tolist() == [0.0, 0.0, 0.0, 1.0]
    assert not failed.has_solution[0] and not failed.uses_feedback[0]
    # its 1 + K rows are skipped like any sample without a context (one plain row at most, for the sanity metric)
    assert (failed.row_index[:, 0] >= 0).sum() <= 1 and failed.num_rows < plain.num_rows
    with pytest.raises(ValueError, match="excluded has 3 entries, expected 4"):
        build_teacher_batch(**kwargs, excluded=[True, False, False])


# --- truncation -------------------------------------------------------------------------------------------


LONG_FEEDBACK = " ".join(f"line{n}" for n in range(300))


def truncation_batch(tokenizer, side: str, limit: int):
    config = CreditConfig(num_negatives=2, max_reprompt_len=limit, reprompt_truncation=side)
    uids = ["a", "a", "b", "b", "c", "c"]
    return make_batch(tokenizer, uids, [0.0] * 6, ["", "", "", LONG_FEEDBACK, "", ""], config=config)


def feedback_of(tokenizer, prompt_ids) -> str:
    text = tokenizer.decode(prompt_ids)
    start = text.index("earlier attempt:\n\n") + len("earlier attempt:\n\n")
    return text[start : text.index("\n\n\n\nCorrectly solve")]


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncation_cuts_only_the_context_and_keeps_the_template(tokenizer, side):
    limit = 200
    batch = build_teacher_batch(**truncation_batch(tokenizer, side, limit))
    assert batch.truncated.tolist() == [False, False, False, True, False, False]
    prompts = rows(batch, "prompts")
    variants = [variant_prompt(batch, prompts, v, 3) for v in range(3)]
    assert max(len(p) for p in variants) <= limit
    assert max(len(p) for p in variants) >= limit - 3, "the cut uses the budget"
    kept = {feedback_of(tokenizer, p) for p in variants}
    assert len(kept) == 1, "all variants of a sample carry the identical context"
    kept = kept.pop()
    assert 0 < len(kept) < len(LONG_FEEDBACK)
    assert LONG_FEEDBACK.startswith(kept) if side == "right" else LONG_FEEDBACK.endswith(kept)
    for v, p in enumerate(variants):
        text = tokenizer.decode(p)
        assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nQuestion ")
        assert text.endswith(
            "\n\nCorrectly solve the original question.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        )
        # the rows are exactly the chat rendering of the truncated reprompt
        question_row = 3 if v == 0 else batch.negatives[3, v - 1].item()
        q = truncation_batch(tokenizer, side, limit)["raw_prompt"][question_row][1]["content"]
        assert p == chat_ids(tokenizer, conversation(reprompt(q, feedback=kept)), **THINKING_OFF)
    assert rows(batch, "responses")[3] == truncation_batch(tokenizer, side, limit)["responses"][3]


def test_truncation_error_names_the_sample_and_lengths(tokenizer):
    with pytest.raises(ValueError, match=r"sample 3 has \d+ tokens .*max_reprompt_len=200"):
        build_teacher_batch(**truncation_batch(tokenizer, "error", 200))
    # within budget: 'error' builds normally
    assert not build_teacher_batch(**truncation_batch(tokenizer, "error", 4000)).truncated.any()


def test_truncation_that_cannot_fit_even_without_context_raises(tokenizer):
    with pytest.raises(ValueError, match=r"sample 3 does not fit credit.max_reprompt_len=40"):
        build_teacher_batch(**truncation_batch(tokenizer, "right", 40))


# --- nested layout round trip through verl's dispatch and micro-batching -------------------------------


def emulate_worker(model, data, dp_size: int, max_token_len: int):
    """verl's path for ``compute_log_prob``: chunk per DP rank, dynamic micro-batches, restore, concat.

    The forward is the model's: position p holds ``log p(input_ids[p + 1] | input_ids[:p + 1])`` and the
    last position holds an unused value, as verl's rolled-label log-probs.
    """
    outputs = []
    for chunk in BatchData(data).chunk(chunks=dp_size):
        chunk.unlock_()  # consolidated for the Ray transfer; the worker receives an unlocked copy
        tu.assign_non_tensor(chunk, use_dynamic_bsz=True, max_token_len_per_gpu=max_token_len)
        micro_batches, indices = prepare_micro_batches(chunk, dp_group=None)
        per_micro = []
        for micro in micro_batches:
            log_probs = []
            for ids, positions in zip(micro["input_ids"].unbind(0), micro["position_ids"].unbind(0), strict=True):
                with torch.no_grad():
                    logits = model(ids[None], position_ids=positions[None]).logits[0].double()
                lp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, ids[1:, None])[:, 0]
                log_probs.append(torch.cat([lp, torch.tensor([123.0], dtype=lp.dtype)]))
            per_micro.append(
                {"model_output": {"log_probs": torch.nested.as_nested_tensor(log_probs, layout=torch.jagged)}}
            )
        restored = postprocess_batch_func(per_micro, indices, chunk)["model_output"]["log_probs"]
        outputs.append(tu.get_tensordict({"log_probs": restored}))
    return BatchData(outputs).concat()["log_probs"]


@pytest.mark.slow  # the tiny model through verl's dispatch (about 25 s)
def test_round_trip_through_verl_dispatch_matches_direct_scoring(tokenizer, tiny_model):
    uids = ["a", "a", "b", "c"]
    texts = ["It is 3.", "Maybe 12, since 3 times 4 is 12.", "No idea.", "The answer: 20"]
    kwargs = make_batch(tokenizer, uids, [1.0, 0.0, 0.0, 1.0], ["", "", "use units", ""], texts=texts)
    kwargs["response_mask"][1][2] = 0  # a masked token inside a response (e.g. a tool turn) stays masked
    kwargs["config"] = CreditConfig(num_negatives=2)
    batch = build_teacher_batch(**kwargs, row_multiple=5)
    # samples 1 and 2 have a context (3 rows each), sample 0 is the sanity row, sample 3 is skipped
    assert batch.num_rows == 10 and batch.num_padding_rows == 3
    assert all(batch.data["loss_mask"][r].sum() == 0 for r in range(7, 10))

    log_probs = emulate_worker(tiny_model, batch.data, dp_size=5, max_token_len=128)
    teacher, contrast = split_teacher_log_probs(log_probs, batch)
    assert teacher.shape == (4, batch.response_mask.shape[1]) and contrast.shape == (4, 2, teacher.shape[1])

    prompts = rows(batch, "prompts")
    mask = batch.response_mask
    for variant in range(3):
        scored = [i for i in range(4) if batch.row_index[variant, i] >= 0]
        skipped = [i for i in range(4) if i not in scored]
        contexts = [variant_prompt(batch, prompts, variant, i) if i in scored else prompts[0] for i in range(4)]
        direct, _ = response_log_probs(tiny_model, contexts, kwargs["responses"])
        got = teacher if variant == 0 else contrast[:, variant - 1]
        torch.testing.assert_close(got[scored], (direct * mask)[scored], rtol=0, atol=1e-9)
        assert not got[skipped].any(), "variants not scored read back as 0"
    assert teacher[1, 2] == 0 and (teacher[:3][mask[:3].bool()] < 0).all()

    # agrees with verl's own readers on the scored rows
    scored = batch.row_index[0] >= 0
    verl_padded = no_padding_2_padding(log_probs, batch.data)[batch.row_index[0][scored]]
    torch.testing.assert_close(teacher[scored], verl_padded[:, : teacher.shape[1]] * mask[scored], rtol=0, atol=0)
    verl_nested = response_from_nested(log_probs, batch.data["response_mask"])
    assert torch.equal(verl_nested[int(batch.row_index[0, 2])], teacher[2, : len(kwargs["responses"][2])])

    # a wider padded layout and a reordered output are handled / refused
    wide, _ = split_teacher_log_probs(log_probs, batch, width=teacher.shape[1] + 5)
    assert torch.equal(wide[:, : teacher.shape[1]], teacher) and not wide[:, teacher.shape[1] :].any()
    reordered = torch.nested.as_nested_tensor(list(log_probs.unbind(0))[::-1], layout=torch.jagged)
    with pytest.raises(ValueError, match="do not match the teacher batch"):
        split_teacher_log_probs(reordered, batch)


@pytest.mark.slow  # the tiny model (about 18 s)
def test_student_contrast_rows_are_the_negatives_rollout_prompts_and_read_back_per_sample(tokenizer, tiny_model):
    uids = ["a", "a", "b", "c"]
    kwargs = make_batch(tokenizer, uids, [1.0, 0.0, 0.0, 0.0], ["", "f", "g", ""], config=CreditConfig(num_negatives=2))
    kwargs["response_mask"][2][1] = 0
    rollout_prompts = [chat_ids(tokenizer, messages, **THINKING_OFF) for messages in kwargs["raw_prompt"]]
    teacher = build_teacher_batch(**kwargs, prompts=rollout_prompts)
    student = build_student_contrast_batch(
        prompts=rollout_prompts,
        responses=kwargs["responses"],
        response_mask=kwargs["response_mask"],
        negatives=teacher.negatives,
        tokenizer=tokenizer,
        row_multiple=5,
    )
    assert student.num_rows == 10 and student.num_padding_rows == 2
    prompts, responses = rows(student, "prompts"), rows(student, "responses")
    for k in range(2):
        for i in range(4):
            source = int(teacher.negatives[i, k])
            assert uids[source] != uids[i]
            assert prompts[k * 4 + i] == rollout_prompts[source] and responses[k * 4 + i] == kwargs["responses"][i]

    log_probs = emulate_worker(tiny_model, student.data, dp_size=5, max_token_len=128)
    got = split_student_log_probs(log_probs, student, width=student.response_mask.shape[1] + 2)
    assert got.shape == (4, 2, student.response_mask.shape[1] + 2) and not got[..., -2:].any()
    mask = student.response_mask
    for k in range(2):
        contexts = [rollout_prompts[int(teacher.negatives[i, k])] for i in range(4)]
        direct, _ = response_log_probs(tiny_model, contexts, kwargs["responses"])
        torch.testing.assert_close(got[:, k, : mask.shape[1]], direct * mask, rtol=0, atol=1e-9)
    assert got[2, :, 1].eq(0).all()


def test_dp_padding_rows_are_appended_and_dropped(tokenizer):
    kwargs = make_batch(
        tokenizer, ["a", "b", "c"], [0.0, 0.0, 0.0], ["f", "g", "h"], config=CreditConfig(num_negatives=2)
    )
    for multiple, padding in ((1, 0), (3, 0), (4, 3), (8, 7)):
        batch = build_teacher_batch(**kwargs, row_multiple=multiple)
        assert batch.num_rows == 9 + padding and batch.num_padding_rows == padding
        lengths = batch.data["input_ids"].offsets().diff()
        values = torch.arange(int(lengths.sum()), dtype=torch.float64)
        log_probs = torch.nested.nested_tensor_from_jagged(values, offsets=batch.data["input_ids"].offsets())
        teacher, contrast = split_teacher_log_probs(log_probs, batch)
        # value = flat position, so each entry names the row and position it was read from
        ends = batch.data["input_ids"].offsets()[1:]
        response_lengths = batch.data["responses"].offsets().diff()
        for row in range(9):
            v, i = divmod(row, 3)
            n = int(response_lengths[row])
            expected = torch.arange(int(ends[row]) - n - 1, int(ends[row]) - 1, dtype=torch.float64)
            got = teacher[i] if v == 0 else contrast[i, v - 1]
            assert torch.equal(got[:n], expected)


# --- input validation ----------------------------------------------------------------------------------


def test_bad_inputs_name_the_sample(tokenizer):
    kwargs = make_batch(tokenizer, ["a", "b"], [0.0, 0.0], None)
    kwargs["raw_prompt"][1] = [{"role": "system", "content": SYSTEM}]
    with pytest.raises(ValueError, match="sample 1 has no user turn"):
        build_teacher_batch(**kwargs)
    kwargs = make_batch(tokenizer, ["a", "b"], [0.0, 0.0], None)
    kwargs["response_mask"][0] = kwargs["response_mask"][0][:-1]
    with pytest.raises(ValueError, match="sample 0: response_mask has"):
        build_teacher_batch(**kwargs)
    kwargs = make_batch(tokenizer, ["a", "b"], [0.0, 0.0], None)
    kwargs["responses"] = torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in kwargs["responses"]], True)
    with pytest.raises(ValueError, match="responses must be a jagged nested tensor or a sequence"):
        build_teacher_batch(**kwargs)
    with pytest.raises(ValueError, match="scores has 3 entries, expected 2"):
        build_teacher_batch(**make_batch(tokenizer, ["a", "b"], [0.0, 0.0, 1.0], None))
    with pytest.raises(ValueError, match="at least 2 prompt groups"):
        build_teacher_batch(**make_batch(tokenizer, ["a", "a"], [0.0, 1.0], None))


def test_jagged_inputs_as_verl_stores_them_give_the_same_batch(tokenizer):
    kwargs = make_batch(tokenizer, ["a", "a", "b", "b"], [1.0, 0.0, 0.0, 0.0], ["", "", "hint", ""])
    rollout = [chat_ids(tokenizer, messages, **THINKING_OFF) for messages in kwargs["raw_prompt"]]
    from_lists = build_teacher_batch(**kwargs, prompts=rollout)

    def jagged(rows_):
        return torch.nested.as_nested_tensor([torch.tensor(r) for r in rows_], layout=torch.jagged)

    kwargs.update(responses=jagged(kwargs["responses"]), response_mask=jagged(kwargs["response_mask"]))
    kwargs["generator"] = torch.Generator().manual_seed(0)
    from_jagged = build_teacher_batch(**kwargs, prompts=jagged(rollout))
    for key in ("input_ids", "position_ids", "prompts", "responses", "response_mask", "loss_mask"):
        assert rows(from_jagged, key) == rows(from_lists, key), key


def test_masked_minus_inf_stays_out_of_the_teacher_scores(tokenizer):
    """A response position outside the mask (e.g. a tool output) may score -inf: it must read back as 0."""
    kwargs = make_batch(tokenizer, ["a", "a", "b", "b"], [1.0, 0.0, 1.0, 0.0], None)
    kwargs["response_mask"] = [[1] * len(r) for r in kwargs["responses"]]
    kwargs["response_mask"][1][1] = 0
    batch = build_teacher_batch(**kwargs)
    ends = batch.data["input_ids"].offsets()[1:]
    lengths = batch.data["input_ids"].offsets().diff().tolist()
    values = [-torch.rand(n, generator=torch.Generator().manual_seed(n)) for n in lengths]
    response_length = len(kwargs["responses"][1])
    for row in batch.row_index[:, 1].tolist():  # sample 1, original and contrast variant
        position = int(ends[row] - (ends[row - 1] if row else 0)) - response_length - 1 + 1  # response token t = 1
        values[row][position] = -float("inf")
    teacher, contrast = split_teacher_log_probs(torch.nested.as_nested_tensor(values, layout=torch.jagged), batch)
    assert torch.isfinite(teacher).all() and torch.isfinite(contrast).all()
    assert teacher[1, 1] == 0 and contrast[1, 0, 1] == 0 and teacher[1, 0] != 0


@pytest.mark.parametrize("swap", ["prompt", "question"])
def test_contrast_variants_and_the_pmi_student_swap_the_same_input_of_a_multi_message_prompt(tokenizer, swap):
    """ToolAlpaca-like prompts: each group's system message holds its own API docs. The teacher's contrast variant
    and the student row of ``contrast_form: pmi`` must swap in the same other input (``credit.contrast_swap``):
    the negative's whole prompt, or only its question inside sample i's messages; they differ only by i's context."""
    from credit_plugin.teacher.prompts import TeacherPrompts

    uids = ["a", "a", "b", "c"]
    docs = {uid: f"API docs of tool {uid}: call {uid}_search(query)." for uid in uids}
    prompt_of = {uid: question(n) for n, uid in enumerate(dict.fromkeys(uids))}
    raw_prompt = [
        [{"role": "system", "content": docs[uid]}, {"role": "user", "content": prompt_of[uid]}] for uid in uids
    ]
    config = CreditConfig(num_negatives=2, contrast_swap=swap, contrast_form="pmi")
    kwargs = make_batch(tokenizer, uids, [1.0, 0.0, 0.0, 0.0], ["", "f", "g", ""], raw_prompt=raw_prompt, config=config)
    rollout_prompts = [chat_ids(tokenizer, messages, **THINKING_OFF) for messages in raw_prompt]
    teacher = build_teacher_batch(**kwargs, prompts=rollout_prompts)
    renderer = TeacherPrompts(raw_prompt, [False] * 4, tokenizer, config, THINKING_OFF)
    pairs = [(i, int(teacher.negatives[i, k])) for k in range(2) for i in range(4)]
    swapped = renderer.swapped(pairs) if swap == "question" else None
    student = build_student_contrast_batch(
        prompts=rollout_prompts,
        responses=kwargs["responses"],
        response_mask=kwargs["response_mask"],
        negatives=teacher.negatives,
        tokenizer=tokenizer,
        swapped_prompts=swapped,
    )
    teacher_prompts, student_prompts = rows(teacher, "prompts"), rows(student, "prompts")
    contexts = {1: ("My answer is 0.", None), 2: (None, "g")}  # samples with a context: (solution, feedback)
    assert teacher.self_distillation_mask.tolist() == [0.0, 1.0, 1.0, 0.0]
    for k in range(2):
        for i in range(4):
            source = int(teacher.negatives[i, k])
            system = docs[uids[source]] if swap == "prompt" else docs[uids[i]]
            other = [{"role": "system", "content": system}, {"role": "user", "content": prompt_of[uids[source]]}]
            assert student_prompts[k * 4 + i] == chat_ids(tokenizer, other, **THINKING_OFF), (swap, i, k)
            if i in contexts:
                solution, feedback = contexts[i]
                reprompted = [other[0], {"role": "user", "content": reprompt(other[1]["content"], solution, feedback)}]
                want = chat_ids(tokenizer, reprompted, **THINKING_OFF)
                assert variant_prompt(teacher, teacher_prompts, k + 1, i) == want, (swap, i, k)


def test_contrast_swap_is_checked():
    with pytest.raises(ValueError, match="contrast_swap"):
        CreditConfig(contrast_swap="system")
