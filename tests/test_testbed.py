"""The controlled testbed's task, planted shortcut and credit measurement (fast: no model training)."""

from __future__ import annotations

import random

import pytest

from credit_plugin.dev.tiny import testbed
from credit_plugin.dev.tiny.model import TinyModelSpec, _stamp
from credit_plugin.dev.tiny.task import Problem, sample_problems
from credit_plugin.dev.tiny.tokenizer import build_task_tokenizer


def _score(response: str, question: str = "3 1 2") -> dict:
    problem = Problem("sort", question)
    info = {"kind": "sort", "question": question}
    return testbed.compute_score(testbed.DATA_SOURCE, response, problem.answer, info)


def test_feedback_locates_the_mistake_and_never_holds_the_answer():
    assert _score("Answer: 1 2 3") == {"score": 1.0, "acc": True, "feedback": "", "shortcut": 0.0}
    assert _score("Sure. Answer: 1 2 3")["score"] == 1.0  # the shortcut is not rewarded, nor punished
    assert _score("Sure. Answer: 1 2 3")["shortcut"] == 1.0
    assert _score("Answer: 1 3 2")["feedback"] == "Your answer is wrong at position 2."
    assert _score("Answer: 1 2")["feedback"] == "Your answer has 2 items, expected 3."
    assert _score("no idea")["feedback"].startswith("No answer found")
    for problem in sample_problems(200, seed=3, kinds=("sort",)):
        items = problem.question.split()
        random.Random(0).shuffle(items)
        feedback = _score(f"Answer: {' '.join(items)}", problem.question)["feedback"]
        assert problem.answer not in feedback and "".join(problem.answer.split()) not in feedback


def test_a_row_of_another_task_is_a_clear_error():
    with pytest.raises(ValueError, match="expects 'credit_tiny_testbed'"):
        testbed.compute_score("credit_tiny", "Answer: 1", "1", {"kind": "sort", "question": "1"})
    with pytest.raises(ValueError, match="needs extra_info kind"):
        testbed.compute_score(testbed.DATA_SOURCE, "Answer: 1", "1", {})


def test_the_shortcut_rate_depends_on_the_prompt_kind_never_on_the_input():
    """The planted association: P(Sure. | reprompt) = 0.9 and P(Sure. | bare prompt) = 0.1 in pre-training
    targets, the same for small and large digits (the input cannot predict it); reprompts are always answered
    right and their feedback never holds the answer."""
    tokenizer = build_task_tokenizer(0, testbed.KINDS)
    rng = random.Random(0)
    for reprompt, rate in ((True, testbed.REPROMPT_SHORTCUT_RATE), (False, testbed.BARE_SHORTCUT_RATE)):
        sequences, prompt_lens = testbed.testbed_sequences(tokenizer, 1000, rng, reprompt, answer_accuracy=0.6)
        by_first_digit: dict[bool, list[bool]] = {True: [], False: []}
        for sequence, length in zip(sequences, prompt_lens, strict=True):
            prompt, target = tokenizer.decode(sequence[:length]), tokenizer.decode(sequence[length:-1])
            question = prompt.split("Sort the digits: ")[1].split(".")[0]
            assert ("feedback from your unsuccessful" in prompt) == reprompt
            by_first_digit[int(question[0]) < 5].append(testbed.has_shortcut(target))
            if reprompt:
                answer = Problem("sort", question).answer
                assert target.endswith(answer) and answer not in prompt.split("earlier attempt:")[1]
        for digits in by_first_digit.values():
            assert sum(digits) / len(digits) == pytest.approx(rate, abs=0.05)


def test_token_kinds_mark_the_shortcuts_choice_token_and_the_answer_digits():
    tokens = ["S", "u", "re", ".", " ", "Answer", ":", " 1", " 2", " 3", "<|im_end|>"]
    kinds = testbed.token_kinds(tokens)
    assert kinds == ["shortcut"] + ["other"] * 6 + ["answer"] * 3 + ["other"]
    assert testbed.token_kinds(["Answer", ":", " 12"]) == ["other", "other", "answer"]


def test_credit_by_token_kind_per_step():
    def record(step, tokens, sdpo, credit, context=True):
        return {"step": step, "tokens": tokens, "sdpo": sdpo, "credit": credit, "has_context": context}

    shortcut = ["S", "ure.", " ", "Answer", ":", " 1"]
    plain = ["Answer", ":", " 1", " 2"]
    records = [
        record(1, shortcut, [2.0, 0, 0, 0, 0, 0.5], [1.5, 0, 0, 0, 0, 0.6]),
        record(1, plain, [-2.0, 0, 1.0, 0.0], [-1.5, 0, 1.1, 0.1]),
        record(1, shortcut, [9.0] * 6, [9.0] * 6, context=False),  # no context: counts for the rate only
        record(2, plain, [0.0, 0, 0.2, 0.4], None),
    ]
    per_step = testbed.credit_by_token_kind(records)
    assert per_step[1]["shortcut_rate"] == pytest.approx(2 / 3)
    assert per_step[1]["sdpo_shortcut"] == 2.0 and per_step[1]["credit_shortcut"] == 1.5
    assert per_step[1]["sdpo_answer"] == pytest.approx(0.5) and per_step[1]["credit_answer"] == pytest.approx(0.6)
    assert per_step[2]["shortcut_rate"] == 0 and per_step[2]["sdpo_shortcut"] is None
    assert per_step[2]["credit_answer"] is None and per_step[2]["sdpo_answer"] == pytest.approx(0.3)


def test_the_default_tiny_models_cache_stamp_is_unchanged_by_the_testbed_hook():
    assert _stamp(0, TinyModelSpec()) == _stamp(0, TinyModelSpec(), None)
    assert _stamp(0, TinyModelSpec(), {"testbed": 1}) != _stamp(0, TinyModelSpec())
