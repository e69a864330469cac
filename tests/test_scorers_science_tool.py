"""Multiple-choice and tool-use scorers, and the data_source dispatcher."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from credit_plugin.scorers import check_options, compute_score, scorer_for
from credit_plugin.scorers.code import score_code
from credit_plugin.scorers.science import NO_OPTION_FEEDBACK, extract_option, normalize_option, score_science
from credit_plugin.scorers.tool_use import NO_CALL_FEEDBACK, ToolCall, parse_tool_calls, score_tool_use


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("The reaction is exothermic, so \\boxed{B}", "B"),
        ("\\boxed{\\text{(C)}}", "C"),
        ("\\boxed{D. Sodium chloride}", "D"),
        ("\\boxed{b}", "B"),
        ("Answer: D", "D"),
        ("The answer is (B).", "B"),
        ("Final answer: **C**", "C"),
        ("ANSWER: E", "E"),
        ("the correct option is J", "J"),
        ("The answer is: option D", "D"),
        ("answer: (b)", "B"),
        ("C", "C"),
        ("(d)", "D"),
        ("A.", "A"),
        ("Between A and B, I pick B.", "B"),
        ("I think (C) is right", "C"),
        ("<think>The answer is A, no wait.</think>\nThe answer is B", "B"),
        # Later statements win over earlier ones; a boxed letter wins over statements.
        ("Answer: A. Hmm, actually answer: C", "C"),
        ("Answer: A ... \\boxed{D}", "D"),
    ],
)
def test_option_letter_is_found_in_common_formats(response, letter):
    assert extract_option(response) == letter


@pytest.mark.parametrize(
    "response", ["", "I am not sure.", "the answer is a mess", "\\boxed{42}", "A cat sat on the mat."]
)
def test_no_option_in_prose_without_a_letter(response):
    assert extract_option(response) is None


def test_unclosed_reasoning_counts_as_the_answer():
    # Without a closing tag the whole response is searched (the model never finished thinking).
    assert extract_option("<think>Answer: B") == "B"


def test_science_scores_and_feedback_never_leak_the_answer_by_default():
    right = score_science("Answer: D", "D")
    assert (right.score, right.acc, right.feedback) == (1.0, True, "")
    wrong = score_science("Answer: B", "(d)")
    assert (wrong.score, wrong.acc) == (0.0, False)
    assert wrong.feedback == "The chosen option B is incorrect." and not re.search(r"\bD\b", wrong.feedback)
    assert score_science("Answer: B", "D", reveal_answer=True).feedback.endswith("The correct option is D.")
    missing = score_science("It depends on the temperature.", "D")
    assert missing.feedback == NO_OPTION_FEEDBACK and "Format problem" in missing.feedback
    assert not re.search(r"\bD\b", missing.feedback)


@pytest.mark.parametrize("ground_truth", ["B", " b ", "(B)", "B.", np.str_("B")])
def test_science_ground_truth_is_normalised(ground_truth):
    assert normalize_option(ground_truth) == "B"


@pytest.mark.parametrize("ground_truth", ["Sodium", "AB", "", "K"])
def test_science_bad_ground_truth_is_an_error(ground_truth):
    with pytest.raises(ValueError, match="one option letter"):
        score_science("Answer: A", ground_truth)


WEATHER = {"name": "getWeather", "arguments": {"city": "Paris", "days": 3}}


@pytest.mark.parametrize(
    "response",
    [
        'Thought: I need the forecast.\nAction: getWeather\nAction Input: {"city": "Paris", "days": 3}',
        'Action: getWeather\nAction Input: ```json\n{"city": " paris ", "days": "3"}\n```',
        '<tool_call>\n{"name": "getWeather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>',
        'Calling now: {"name": "getWeather", "parameters": {"city": "Paris", "days": 3.0}}',
        '```json\n[{"name": "getWeather", "arguments": {"city": "Paris", "days": 3}}]\n```',
        '{"function": {"name": "getWeather", "arguments": "{\\"city\\": \\"Paris\\", \\"days\\": 3}"}}',
        "<think>Action: wrongTool\nAction Input: {}</think>\n"
        'Action: getWeather\nAction Input: {"city": "Paris", "days": 3}',
    ],
)
def test_tool_call_formats_that_match(response):
    result = score_tool_use(response, json.dumps(WEATHER))
    assert (result.score, result.acc, result.feedback) == (1.0, True, "")


@pytest.mark.parametrize(
    ("response", "feedback"),
    [
        (
            'Action: getForecast\nAction Input: {"city": "Paris", "days": 3}',
            "Call 1 (getForecast): wrong tool 'getForecast'.",
        ),
        ('Action: getWeather\nAction Input: {"city": "Paris"}', "Call 1 (getWeather): missing argument(s) 'days'."),
        (
            'Action: getWeather\nAction Input: {"city": "Paris", "days": 3, "unit": "C"}',
            "Call 1 (getWeather): unexpected argument(s) 'unit'.",
        ),
        (
            'Action: getWeather\nAction Input: {"city": "Lyon", "days": 3}',
            "Call 1 (getWeather): wrong value for argument 'city': got \"Lyon\".",
        ),
        ("I cannot help with that.", NO_CALL_FEEDBACK),
        ("", NO_CALL_FEEDBACK),
    ],
)
def test_tool_mismatches_are_named(response, feedback):
    result = score_tool_use(response, WEATHER)
    assert (result.score, result.acc, result.feedback) == (0.0, False, feedback)


def test_unparsable_json_is_reported():
    react = score_tool_use('Action: getWeather\nAction Input: {"city": "Paris", days: 3}', WEATHER)
    assert react.feedback.startswith("Call 1 (getWeather): its Action Input is not valid JSON")
    bare = score_tool_use('{"name": "getWeather", "arguments": {"city": "Paris"', WEATHER)
    assert bare.feedback.startswith("No tool call could be parsed: a tool call is not valid JSON")
    tagged = score_tool_use("<tool_call>{'name': 'getWeather'}</tool_call>", WEATHER)
    assert "a <tool_call> block is not valid JSON" in tagged.feedback
    no_input = score_tool_use("Action: getWeather\nObservation: sunny", WEATHER)
    assert "no 'Action Input:' line follows it" in no_input.feedback


def test_reference_in_react_format_several_calls_and_reveal():
    reference = 'Action: search\nAction Input: {"q": "verl"}\nAction: open\nAction Input: {"id": 1}'
    assert score_tool_use(
        'Action: search\nAction Input: {"q": "VERL"}\nAction: open\nAction Input: {"id": 1}', reference
    ).acc
    short = score_tool_use('Action: search\nAction Input: {"q": "verl"}', reference)
    assert short.feedback == "The response makes 1 tool call(s), expected 2."
    revealed = score_tool_use('Action: find\nAction Input: {"q": "x"}', reference, reveal_answer=True)
    assert "the expected tool is 'search'" in revealed.feedback
    hidden = score_tool_use(
        'Action: search\nAction Input: {"q": "x"}\nAction: open\nAction Input: {"id": 1}', reference
    )
    assert "verl" not in hidden.feedback
    assert parse_tool_calls("Action: a\nAction Input: {}") == ([ToolCall("a", {})], "")


def test_tool_bad_ground_truth_is_an_error():
    with pytest.raises(ValueError, match="no valid call"):
        score_tool_use("Action: a\nAction Input: {}", "just some words")


def test_dispatcher_picks_the_scorer_by_prefix():
    assert scorer_for("livecodebench_v6") is score_code and scorer_for("LCB") is score_code
    assert scorer_for("codecontests") is score_code
    assert scorer_for("sciknoweval/chemistry") is score_science and scorer_for("science_mcq") is score_science
    assert scorer_for("ToolAlpaca") is score_tool_use and scorer_for("tooluse") is score_tool_use
    with pytest.raises(ValueError, match="'gsm8k'.*known prefixes: livecodebench"):
        scorer_for("gsm8k")


def test_dispatcher_returns_the_dict_and_routes_options():
    result = compute_score("sciknoweval", "Answer: B", "D", None, reveal_answer=True, timeout_s=3.0)
    assert result == {
        "score": 0.0,
        "acc": False,
        "feedback": "The chosen option B is incorrect. The correct option is D.",
    }
    tool = compute_score("tooluse", "Action: x\nAction Input: {}", WEATHER, {}, max_feedback_chars=10)
    assert len(tool["feedback"]) == 10
    code = compute_score(
        "livecodebench", "```python\nprint(int(input()) + 1)\n```", {"inputs": ["1"], "outputs": ["2"]}
    )
    assert code == {"score": 1.0, "acc": True, "feedback": ""}
    assert compute_score("science", "B", "B", reward_router_address="127.0.0.1:1", reward_model_tokenizer=None)["acc"]


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match=r"unknown scorer options \['timeout'\]"):
        compute_score("science", "B", "B", timeout=3)
    with pytest.raises(ValueError, match="reward.reward_kwargs"):
        check_options({"reveal": True}, where="reward.reward_kwargs")
    with pytest.raises(ValueError, match="max_feedback_chars"):
        compute_score("science", "B", "C", max_feedback_chars=-1)
