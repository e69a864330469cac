"""The code scorer and its sandbox: real subprocesses, real limits, a real socket to connect to."""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time

import pytest

from credit_plugin.scorers.code import extract_code, parse_tests, score_code, stdout_matches, values_match
from credit_plugin.scorers.result import PROGRAM_OUTPUT_CLOSE, PROGRAM_OUTPUT_OPEN
from credit_plugin.scorers.sandbox import CaseInput, SandboxLimits, run_tests

ADD = {"inputs": ["1 2\n", "3 4\n", "10 -2\n"], "outputs": ["3\n", "7\n", "8\n"]}
ADD_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"


def fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}```\nDone."


def test_correct_program_scores_one_with_empty_feedback():
    result = score_code(fenced(ADD_PROGRAM), json.dumps(ADD))
    assert (result.score, result.acc, result.feedback) == (1.0, True, "")


def test_wrong_program_lists_input_expected_and_got():
    result = score_code(fenced("a, b = map(int, input().split())\nprint(a * b)\n"), ADD)
    assert result.score == 0.0 and not result.acc
    assert "Passed 0 of 3 tests." in result.feedback
    assert (
        f"Test 1 failed: wrong answer.\nInput:\n1 2\nExpected output:\n3\nYour output:\n"
        f"{PROGRAM_OUTPUT_OPEN}\n2\n{PROGRAM_OUTPUT_CLOSE}"
    ) in result.feedback


def test_fraction_mode_gives_partial_credit_and_all_mode_does_not():
    program = fenced("a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)\n")
    assert score_code(program, ADD, score_mode="fraction").score == pytest.approx(2 / 3)
    partial = score_code(program, ADD)
    assert partial.score == 0.0 and "Passed 2 of 3 tests." in partial.feedback and "Test 3 failed" in partial.feedback


def test_syntax_error_is_reported_without_running():
    result = score_code(fenced("def f(:\n    pass\n"), ADD)
    assert result.score == 0.0
    assert (
        "does not compile" in result.feedback and "SyntaxError" in result.feedback and "Test 1" not in result.feedback
    )


def test_empty_response_and_prose_without_code():
    assert score_code("", ADD).feedback == "The response contains no code to run."
    prose = score_code("I think you should add the two numbers.", ADD)
    assert prose.score == 0.0 and "no ```python block was found" in prose.feedback


def test_runtime_error_shows_the_candidates_traceback_only():
    result = score_code(fenced("def parse(s):\n    return int(s)\nparse('x')\n"), ADD)
    assert 'File "solution.py", line 3' in result.feedback and "ValueError: invalid literal" in result.feedback
    assert "sandbox_child" not in result.feedback
    assert "(same error as test 1)" in result.feedback, "a repeated error is not quoted again"


def test_infinite_loop_times_out_and_stops_the_run():
    start = time.monotonic()
    result = score_code(fenced("while True:\n    pass\n"), ADD, timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert elapsed < 4.0, f"took {elapsed:.1f}s; the first time-out should end the run"
    assert result.score == 0.0 and "Test 1 failed: time limit exceeded (1 s)." in result.feedback
    assert "2 more tests were not run after the time-out." in result.feedback


def test_total_time_budget_caps_a_slow_program():
    slow = fenced("import time\ntime.sleep(0.6)\n" + ADD_PROGRAM)
    start = time.monotonic()
    result = score_code(slow, ADD, timeout_s=5.0, total_timeout_s=1.0, score_mode="fraction")
    assert time.monotonic() - start < 3.0
    assert result.score < 1.0
    assert "time limit exceeded" in result.feedback or "as the time budget ran out" in result.feedback


def test_memory_limit_kills_a_hog_that_fits_a_larger_limit():
    hog = fenced("block = bytearray(300 * 1024 * 1024)\nprint(len(block) > 0)\n")
    tests = {"inputs": [""], "outputs": ["True"]}
    assert score_code(hog, tests, memory_limit_mb=1024).acc
    result = score_code(hog, tests, memory_limit_mb=128)
    assert not result.acc and "MemoryError" in result.feedback and "memory limit is 128 MiB" in result.feedback


def test_output_flood_is_cut_and_feedback_stays_short():
    flood = fenced("while True:\n    print('x' * 1000)\n")
    start = time.monotonic()
    result = score_code(flood, ADD, max_output_bytes=1 << 20, max_feedback_chars=400, timeout_s=5.0)
    assert time.monotonic() - start < 5.0
    assert "output limit exceeded" in result.feedback and len(result.feedback) <= 400


def test_long_expected_output_and_long_response_respect_max_feedback_chars():
    tests = {"inputs": ["5\n"], "outputs": [" ".join(["9"] * 5000)]}
    response = "x" * 50_000 + fenced("print(0)\n")
    result = score_code(response, tests, max_feedback_chars=300)
    assert not result.acc and len(result.feedback) <= 300 and result.feedback.endswith("[... feedback truncated]")


@pytest.fixture()
def listener():
    """A TCP server on 127.0.0.1 recording whether anything connected."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3.0)
    accepted = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    server.close()
    thread.join(timeout=5)


def test_network_attempt_reaches_no_host_socket(listener):
    port, accepted = listener
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n"
    result = score_code(fenced(code), {"inputs": [""], "outputs": ["connected"]})
    assert not result.acc and "ConnectionRefusedError" in result.feedback, result.feedback
    time.sleep(0.2)
    assert accepted == []


def test_a_crash_is_reported_by_signal_name():
    result = score_code(fenced("import ctypes\nctypes.string_at(0)\n"), {"inputs": [""], "outputs": [""]})
    assert "Test 1 failed: the program was killed by signal SIGSEGV.\nInput:\n(empty)" in result.feedback


def test_child_gets_no_inherited_environment_and_its_directories_are_removed(monkeypatch, tmp_path):
    monkeypatch.setenv("CREDIT_TEST_SECRET", "hunter2")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = "import os\nopen('scratch.txt', 'w').write('x')\nprint(os.environ.get('CREDIT_TEST_SECRET'))\n"
    assert score_code(fenced(code), {"inputs": [""], "outputs": ["None"]}).acc
    assert list(tmp_path.iterdir()) == []


def test_function_call_tests_in_livecodebench_layout():
    tests = [
        {"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]", "testtype": "functional"},
        {"input": "[3, 3]\n6", "output": "[0, 1]", "testtype": "functional"},
    ]
    solution = (
        "class Solution:\n    def twoSum(self, nums, target):\n"
        "        seen = {}\n        for i, x in enumerate(nums):\n"
        "            if target - x in seen:\n                return (seen[target - x], i)\n"
        "            seen[x] = i\n"
    )
    extra_info = {"metadata": json.dumps({"func_name": "twoSum"})}
    assert score_code(fenced(solution), json.dumps(tests), extra_info).acc
    wrong = score_code(fenced("def twoSum(nums, target):\n    return [1, 0]\n"), {"tests": tests, "fn_name": "twoSum"})
    assert "Call: twoSum([2, 7, 11, 15], 9)" in wrong.feedback
    assert f"Expected return value: [0, 1]\nYour return value:\n{PROGRAM_OUTPUT_OPEN}\n[1, 0]\n" in wrong.feedback


def test_function_call_tests_with_fn_name_and_argument_lists():
    tests = {"fn_name": "mean", "inputs": [[[1, 2]], [[1, 2, 4]]], "outputs": [1.5, 7 / 3]}
    assert score_code(fenced("def mean(xs):\n    return sum(xs) / len(xs)\n"), tests).acc
    missing = score_code(fenced("def average(xs):\n    return 0\n"), tests)
    assert "defines neither a function mean()" in missing.feedback


def test_last_python_block_after_reasoning_is_run():
    response = "<think>\n```python\nprint('draft')\n```\n</think>\nFirst try:\n```python\nprint(0)\n```\n" + fenced(
        ADD_PROGRAM
    )
    assert extract_code(response) == (ADD_PROGRAM, True)
    assert score_code(response, ADD).acc


def test_output_comparison_tolerates_whitespace_and_float_rounding():
    assert stdout_matches("1 2\n3\n", "1 2  \n3")
    assert stdout_matches("0.3333333", "0.33333331")
    assert not stdout_matches("1 2", "1 3") and not stdout_matches("1", "1 1")
    assert values_match([1, [2.0, 3]], [1, [2.0000000001, 3]]) and not values_match({"a": 1}, {"a": 2})


def test_integers_compare_exactly_and_float_tolerance_is_an_option():
    # rel_tol=1e-6 let these pass before
    assert not stdout_matches("1000000007", "1000000000") and not stdout_matches("998244353", "998244000")
    assert not values_match([1000000007], [1000000000]) and not values_match(True, 1)
    assert stdout_matches("2.5", "2.5000001") and not stdout_matches("2.5", "2.5000001", float_tolerance=0.0)
    assert stdout_matches("2.5", "2.6", float_tolerance=0.1) and values_match(2.5, 2.6, float_tolerance=0.1)
    tests = {"inputs": [""], "outputs": ["998244353"]}
    assert not score_code(fenced("print(998244000)\n"), tests, float_tolerance=0.01).acc
    floats = {"inputs": [""], "outputs": ["0.5"]}
    assert score_code(fenced("print(0.5001)\n"), floats, float_tolerance=0.01).acc
    assert not score_code(fenced("print(0.5001)\n"), floats).acc


@pytest.mark.parametrize(
    ("ground_truth", "message"),
    [
        ("not json", "not JSON"),
        ({"inputs": ["1"], "outputs": []}, "1 inputs but 0 outputs"),
        ([{"input": "1", "output": "2", "testtype": "functional"}], "no fn_name"),
        ({"something": 1}, "code ground_truth must be"),
    ],
)
def test_bad_ground_truth_names_the_problem(ground_truth, message):
    with pytest.raises(ValueError, match=message):
        parse_tests(ground_truth)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("score_mode", "some"),
        ("max_failures", 0),
        ("timeout_s", -1),
        ("memory_limit_mb", 0),
        ("max_feedback_chars", 0),
        ("max_processes", 0),
        ("float_tolerance", -1),
        ("sandbox", "docker"),
        ("sandbox_fusion_url", "http://127.0.0.1:1/run_code"),
    ],
)
def test_bad_options_name_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        score_code(fenced(ADD_PROGRAM), ADD, **{option: value})


def test_each_test_runs_in_a_fresh_directory():
    code = "import os\nprint(os.path.exists('mark'))\nopen('mark', 'w').close()\n"
    outcomes = run_tests(code, [CaseInput(stdin=""), CaseInput(stdin="")], None, SandboxLimits(timeout_s=5), 20.0)
    assert [outcome.stdout for outcome in outcomes] == ["False\n", "False\n"]
