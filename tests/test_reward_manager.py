"""The ``credit`` reward manager inside verl's own reward loop: real config, worker, tokenizer and DataProto."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from tensordict import TensorDict
from verl import DataProto
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput, AgentLoopWorker
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
from verl.trainer.ppo.reward import load_reward_manager, resolve_reward_manager_cls

import credit_plugin.reward_manager
from credit_plugin.dev.tiny.model import qwen_tokenizer_dir
from credit_plugin.reward_manager import CreditRewardManager, reward_failed_of, reward_failure_metrics
from credit_plugin.scorers import sandbox
from credit_plugin.scorers.result import PROGRAM_OUTPUT_OPEN

OK = {"reward_error": 0.0, "reward_timeout": 0.0, "reward_error_reason": ""}

ADD_TESTS = json.dumps({"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", "10\n"]})
QUESTION = [{"role": "user", "content": "Read two integers and print their sum."}]


def verl_config(*overrides: str):
    """verl's own ``ppo_trainer`` config with the actor's tokenizer pointing at the real Qwen files."""
    import verl.trainer.config

    with initialize_config_dir(config_dir=os.path.dirname(verl.trainer.config.__file__), version_base=None):
        return compose(
            config_name="ppo_trainer",
            overrides=[f"actor_rollout_ref.model.path={qwen_tokenizer_dir()}", "reward.num_workers=1", *overrides],
        )


@pytest.fixture(scope="module")
def config():
    return verl_config("reward.reward_manager.name=credit", "+reward.reward_kwargs.timeout_s=2")


@pytest.fixture(scope="module")
def reward_worker(config) -> RewardLoopWorker:
    """verl's reward-loop worker, built locally (it is a Ray actor in training): it loads our manager itself."""
    return RewardLoopWorker(config)


class _LocalActorHandle:
    """Stands in for the Ray actor handle only: ``handle.compute_score.remote(data)`` awaits the real worker."""

    def __init__(self, worker: RewardLoopWorker) -> None:
        self.compute_score = type("Method", (), {"remote": staticmethod(worker.compute_score)})()


def stream_score(worker: RewardLoopWorker, response: str, data_source: str, ground_truth) -> AgentLoopOutput:
    """Score one trajectory exactly as verl's streaming path does (``AgentLoopWorker._compute_score``)."""
    tokenizer = worker.input_tokenizer
    prompt_text = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer.encode(prompt_text, add_special_tokens=False)
    response_ids = tokenizer.encode(response, add_special_tokens=False) + [tokenizer.eos_token_id]
    output = AgentLoopOutput(
        prompt_ids=prompt_ids,
        response_ids=response_ids,
        response_mask=[1] * len(response_ids),
        metrics=AgentLoopMetrics(),
        num_turns=2,
    )
    agent_worker = object.__new__(AgentLoopWorker)
    agent_worker.processor = None
    agent_worker.mm_processor_kwargs = {}
    agent_worker.reward_loop_worker_handles = [_LocalActorHandle(worker)]
    dataset_fields = {
        "data_source": data_source,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {"index": 0, "split": "train"},
        "raw_prompt": QUESTION,
        "uid": "prompt-0",
        "index": 0,
    }
    asyncio.run(agent_worker._compute_score([output], kwargs=dataset_fields))
    assert dataset_fields["extra_info"] == {"index": 0, "split": "train"}, "the dataset's dict must not be mutated"
    return output


def with_options(config, **options):
    config = copy.deepcopy(config)
    with open_dict(config):
        for key, value in options.items():
            OmegaConf.update(config, key, value, force_add=True)
    return config


def importlib_source(module_path: str) -> dict:
    return {
        "reward.reward_manager.source": "importlib",
        "reward.reward_manager.module.path": module_path,
        "reward.reward_manager.name": "CreditRewardManager",
    }


def test_verl_resolves_credit_from_its_registry(config):
    assert get_reward_manager_cls("credit") is CreditRewardManager
    assert resolve_reward_manager_cls(config) is CreditRewardManager


@pytest.mark.parametrize(
    "module_path", ["pkg://credit_plugin.reward_manager", credit_plugin.reward_manager.__file__], ids=["pkg", "file"]
)
def test_verl_loads_credit_through_importlib(config, reward_worker, module_path):
    config = with_options(config, **importlib_source(module_path))
    cls = resolve_reward_manager_cls(config)
    assert issubclass(cls, RewardManagerBase) and cls.__qualname__ == "CreditRewardManager"
    # verl executes a file path anew on every load, so compare by name, not identity.
    manager = load_reward_manager(config, reward_worker.input_tokenizer)
    assert type(manager).__qualname__ == "CreditRewardManager" and isinstance(manager, RewardManagerBase)
    assert manager.uses_credit_scorers and manager.score_options == {"timeout_s": 2}
    assert get_reward_manager_cls("credit") is CreditRewardManager, "loading the file again must not re-register"


def test_a_bare_dotted_module_path_is_taken_for_a_file_by_verl(config):
    config = with_options(config, **importlib_source("credit_plugin.reward_manager"))
    with pytest.raises(FileNotFoundError):
        resolve_reward_manager_cls(config)


def test_streaming_path_puts_feedback_into_extra_fields(reward_worker):
    assert isinstance(reward_worker.reward_manager, CreditRewardManager)
    wrong = stream_score(
        reward_worker, "```python\na, b = map(int, input().split())\nprint(a - b)\n```", "livecodebench", ADD_TESTS
    )
    info = wrong.extra_fields["reward_extra_info"]
    assert wrong.reward_score == 0.0 and info["acc"] is False and info["score"] == 0.0
    assert "Test 1 failed: wrong answer." in info["feedback"]
    assert f"Your output:\n{PROGRAM_OUTPUT_OPEN}\n-1\n" in info["feedback"]

    right = stream_score(
        reward_worker, "```python\na, b = map(int, input().split())\nprint(a + b)\n```", "livecodebench", ADD_TESTS
    )
    assert right.reward_score == 1.0
    assert right.extra_fields["reward_extra_info"] == {"score": 1.0, "acc": True, "feedback": "", **OK}

    science = stream_score(reward_worker, "<think>Maybe A.</think>The answer is \\boxed{C}.", "sciknoweval", "B")
    assert science.extra_fields["reward_extra_info"]["feedback"] == "The chosen option C is incorrect."


def test_batch_as_the_reward_loop_manager_sends_it_has_uniform_keys(reward_worker):
    tokenizer = reward_worker.input_tokenizer
    responses = ["Answer: B", 'Action: getWeather\nAction Input: {"city": "Rome"}', "```python\nprint(3)\n```"]
    prompt = torch.tensor([tokenizer.encode("question", add_special_tokens=False)] * 3)
    encoded = [tokenizer.encode(text, add_special_tokens=False) for text in responses]
    width = max(map(len, encoded))
    response_ids = torch.full((3, width), tokenizer.pad_token_id)
    response_mask = torch.zeros(3, width, dtype=torch.long)
    for row, ids in enumerate(encoded):
        response_ids[row, : len(ids)] = torch.tensor(ids)
        response_mask[row, : len(ids)] = 1
    data = DataProto(
        batch=TensorDict(
            {
                "prompts": prompt,
                "responses": response_ids,
                "attention_mask": torch.cat([torch.ones_like(prompt), response_mask], dim=1),
            },
            batch_size=3,
        ),
        non_tensor_batch={
            "data_source": np.array(["sciknoweval", "toolalpaca", "livecodebench"], dtype=object),
            "reward_model": np.array(
                [
                    {"ground_truth": "B"},
                    {"ground_truth": {"name": "getWeather", "arguments": {"city": "Paris"}}},
                    {"ground_truth": ADD_TESTS},
                ],
                dtype=object,
            ),
            "extra_info": np.array([{}, {}, None], dtype=object),
        },
    )
    outputs = asyncio.run(reward_worker.compute_score_batch(data))
    assert [out["reward_score"] for out in outputs] == [1.0, 0.0, 0.0]
    # RewardLoopManager.compute_rm_score takes the keys of the first sample for every sample.
    assert all(out["reward_extra_info"].keys() == {"score", "acc", "feedback", *OK} for out in outputs)
    feedback = np.array([out["reward_extra_info"]["feedback"] for out in outputs])
    assert feedback[0] == "" and "wrong value for argument 'city'" in feedback[1] and "Passed 1 of 2" in feedback[2]


def test_scoring_runs_off_the_event_loop(reward_worker):
    manager = reward_worker.reward_manager
    endless = "```python\nwhile True:\n    pass\n```"

    async def main():
        tokenizer = manager.tokenizer
        ids = torch.tensor(tokenizer.encode(endless, add_special_tokens=False))
        data = DataProto(
            batch=TensorDict(
                {"prompts": ids[:1][None], "responses": ids[None], "attention_mask": torch.ones(1, len(ids) + 1)},
                batch_size=1,
            ),
            non_tensor_batch={
                "data_source": np.array(["code"], dtype=object),
                "reward_model": np.array([{"ground_truth": ADD_TESTS}], dtype=object),
            },
        )
        ticks = 0
        scoring = asyncio.ensure_future(manager.run_single(data))
        while not scoring.done():
            await asyncio.sleep(0.05)
            ticks += 1
        return scoring.result(), ticks

    start = time.monotonic()
    result, ticks = asyncio.run(main())
    assert time.monotonic() - start >= 2.0 and ticks >= 20, "the loop kept running while the sandbox waited"
    assert "time limit exceeded (2 s)" in result["reward_extra_info"]["feedback"]


def test_custom_reward_function_is_used_like_naive(config, reward_worker, tmp_path):
    module = tmp_path / "judge.py"
    module.write_text(
        "def rich(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"
        "    return {'score': 0.25, 'acc': False, 'feedback': 'judge: ' + solution_str.strip()[:6]}\n"
        "def bare(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"
        "    return 0.75\n"
    )
    for name, expected in (
        ("rich", {"score": 0.25, "acc": False, "feedback": "judge: Answer", **OK}),
        ("bare", {"acc": 0.75, "feedback": "", **OK}),
    ):
        custom = with_options(
            config, **{"reward.custom_reward_function.path": str(module), "reward.custom_reward_function.name": name}
        )
        # The worker as RewardLoopWorker._init_reward_fn would build it for this config (tokenizer reused).
        worker = copy.copy(reward_worker)
        worker.config = custom
        worker.reward_manager = load_reward_manager(custom, reward_worker.input_tokenizer)
        assert isinstance(worker.reward_manager, CreditRewardManager) and not worker.reward_manager.uses_credit_scorers
        output = stream_score(worker, "Answer: B", "anything_goes", "B")
        assert output.extra_fields["reward_extra_info"] == expected


def test_unknown_reward_kwargs_are_named(config, reward_worker):
    typo = with_options(config, **{"reward.reward_kwargs.timeout": 2})
    with pytest.raises(ValueError, match=r"reward\.reward_kwargs \['timeout'\]"):
        load_reward_manager(typo, reward_worker.input_tokenizer)


def test_colocated_reward_model_inputs_score_zero_with_the_reason(reward_worker):
    # What PPOTrainerSync._compute_reward_colocate sends: no data_source, no ground truth.
    data = DataProto(
        batch=TensorDict(
            {
                "prompts": torch.tensor([[1, 2]]),
                "responses": torch.tensor([[3, 4]]),
                "attention_mask": torch.ones(1, 4, dtype=torch.long),
            },
            batch_size=1,
        ),
        non_tensor_batch={"raw_prompt": np.array([QUESTION], dtype=object)},
    )
    result = asyncio.run(reward_worker.reward_manager.run_single(data))
    info = result["reward_extra_info"]
    assert result["reward_score"] == 0.0 and info["reward_error"] == 1.0 and info["reward_timeout"] == 0.0
    assert "colocated reward-model path" in info["reward_error_reason"] and info["feedback"] == ""


@pytest.mark.slow  # a fresh process importing verl (about 40 s)
def test_registration_survives_verls_own_plugin_import_order():
    """verl imports plugins half-way through ``import verl``; importing the manager there must work."""
    code = (
        "import verl\n"
        "from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls\n"
        "print(get_reward_manager_cls('credit').__module__)\n"
    )
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "credit_plugin.reward_manager"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "credit_plugin.reward_manager"


def make_batch(tokenizer, responses: list[str], **columns: list) -> DataProto:
    """A batch as verl's RewardLoopManager sends it: padded responses and the dataset's columns."""
    prompt = torch.tensor([tokenizer.encode("question", add_special_tokens=False)] * len(responses))
    encoded = [tokenizer.encode(text, add_special_tokens=False) or [tokenizer.pad_token_id] for text in responses]
    width = max(map(len, encoded))
    response_ids = torch.full((len(responses), width), tokenizer.pad_token_id)
    response_mask = torch.zeros(len(responses), width, dtype=torch.long)
    for row, ids in enumerate(encoded):
        response_ids[row, : len(ids)] = torch.tensor(ids)
        response_mask[row, : len(ids)] = 1
    tensors = {
        "prompts": prompt,
        "responses": response_ids,
        "attention_mask": torch.cat([torch.ones_like(prompt), response_mask], dim=1),
    }
    non_tensor = {key: np.array(values, dtype=object) for key, values in columns.items()}
    return DataProto(batch=TensorDict(tensors, batch_size=len(responses)), non_tensor_batch=non_tensor)


def test_bad_samples_score_zero_and_the_rest_of_the_batch_is_scored(reward_worker):
    tokenizer = reward_worker.input_tokenizer
    right = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    data = make_batch(
        tokenizer,
        [right, right, right, right, right, right],
        data_source=["code", None, "code", "code", "no_such_task", "code"],
        reward_model=[
            {"ground_truth": ADD_TESTS},
            {"ground_truth": ADD_TESTS},
            None,
            {"ground_truth": "not json: SECRET-GROUND-TRUTH"},
            {"ground_truth": ADD_TESTS},
            {"ground_truth": ADD_TESTS},
        ],
        extra_info=[{}, {}, {}, {}, {}, "not a dict"],
    )
    outputs = asyncio.run(reward_worker.compute_score_batch(data))
    assert [out["reward_score"] for out in outputs] == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    infos = [out["reward_extra_info"] for out in outputs]
    assert [info["reward_error"] for info in infos] == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert all(info.keys() == infos[0].keys() for info in infos), "verl takes the first sample's keys for all"
    reasons = [info["reward_error_reason"] for info in infos]
    assert "has no ['data_source']" in reasons[1] and "has no ['reward_model']" in reasons[2]
    assert "ValueError in the scorer" in reasons[3] and "SECRET-GROUND-TRUTH" not in reasons[3]
    assert "ValueError in the scorer" in reasons[4]
    # A failed sample gets no feedback and, in the teacher pass, no teacher context at all.
    assert [info["feedback"] == "" for info in infos] == [True] * 6
    assert reward_failed_of({"extra_fields": [{"reward_extra_info": info} for info in infos]}, 6) == [
        False,
        True,
        True,
        True,
        True,
        False,
    ]
    extra_fields = [{"reward_extra_info": info} for info in infos]
    assert reward_failure_metrics(extra_fields) == {"credit/reward/errors": 4.0, "credit/reward/timeouts": 0.0}


def custom_manager(config, reward_worker, tmp_path, body: str, **options) -> CreditRewardManager:
    module = tmp_path / "judge.py"
    module.write_text("import threading, time\nACTIVE = []\nPEAK = [0]\n" + body)
    custom = with_options(
        config,
        **{"reward.custom_reward_function.path": str(module), "reward.custom_reward_function.name": "judge"},
        **{f"reward.reward_kwargs.{key}": value for key, value in options.items()},
    )
    return load_reward_manager(custom, reward_worker.input_tokenizer)


def test_a_scorer_past_score_timeout_s_gives_zero_and_a_timeout(config, reward_worker, tmp_path):
    manager = custom_manager(
        config,
        reward_worker,
        tmp_path,
        "def judge(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"
        "    time.sleep(30 if 'slow' in solution_str else 0)\n    return 1.0\n",
        score_timeout_s=0.5,
    )
    data = make_batch(manager.tokenizer, ["slow"], data_source=["x"], reward_model=[{"ground_truth": "y"}])
    start = time.monotonic()
    result = asyncio.run(manager.run_single(data))
    assert time.monotonic() - start < 5.0
    info = result["reward_extra_info"]
    assert result["reward_score"] == 0.0 and info["reward_timeout"] == 1.0 and info["reward_error"] == 1.0
    assert "took longer than 0.5 s" in info["reward_error_reason"] and info["feedback"] == ""
    metrics = reward_failure_metrics([{"reward_extra_info": info}, {"reward_extra_info": {**info, **OK}}])
    assert metrics == {"credit/reward/errors": 1.0, "credit/reward/timeouts": 1.0}


def test_max_parallel_bounds_concurrent_scorer_calls(config, reward_worker, tmp_path):
    manager = custom_manager(
        config,
        reward_worker,
        tmp_path,
        "LOCK = threading.Lock()\n"
        "def judge(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"
        "    with LOCK:\n        ACTIVE.append(1)\n        PEAK[0] = max(PEAK[0], len(ACTIVE))\n"
        "    time.sleep(0.3)\n"
        "    with LOCK:\n        ACTIVE.pop()\n    return float(PEAK[0])\n",
        max_parallel=2,
    )
    data = make_batch(manager.tokenizer, ["a"] * 6, data_source=["x"] * 6, reward_model=[{"ground_truth": "y"}] * 6)

    async def all_at_once():
        return await asyncio.gather(*(manager.run_single(data[i : i + 1]) for i in range(6)))

    results = asyncio.run(all_at_once())
    assert max(result["reward_score"] for result in results) == 2.0


@pytest.mark.parametrize("max_parallel", [1, 2])
def test_a_timed_out_call_keeps_its_slot_and_starves_no_later_sample(config, reward_worker, tmp_path, max_parallel):
    """Issue 18 item 5: calls past their time-out hold their slot; the calls after them run in full time."""
    manager = custom_manager(
        config,
        reward_worker,
        tmp_path,
        "def judge(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"
        "    time.sleep(1.5 if 'slow' in solution_str else 0.05)\n    return 1.0\n",
        score_timeout_s=0.5,
        max_parallel=max_parallel,
    )
    texts = ["slow"] * max_parallel + ["fast"] * max_parallel
    data = make_batch(
        manager.tokenizer, texts, data_source=["x"] * len(texts), reward_model=[{"ground_truth": "y"}] * len(texts)
    )

    async def in_order():
        tasks = []
        for i in range(len(texts)):
            tasks.append(asyncio.create_task(manager.run_single(data[i : i + 1])))
            await asyncio.sleep(0.01)  # the slow ones take their slots first
        return await asyncio.gather(*tasks)

    results = asyncio.run(in_order())
    timeouts = [result["reward_extra_info"]["reward_timeout"] for result in results]
    assert timeouts == [1.0] * max_parallel + [0.0] * max_parallel
    assert [result["reward_score"] for result in results[max_parallel:]] == [1.0] * max_parallel


@pytest.mark.parametrize(
    ("options", "bound"),
    [
        ({"score_timeout_s": 30}, 70),
        ({"score_timeout_s": 40, "total_timeout_s": 30}, 40),
        ({"sandbox": "sandbox_fusion", "sandbox_fusion_url": "http://127.0.0.1:9/run_code"}, 276),
    ],
    ids=["bwrap", "bwrap_equal", "sandbox_fusion_retries"],
)
def test_score_timeout_s_must_exceed_the_sandboxs_own_limit(config, reward_worker, options, bound):
    bad = with_options(config, **{f"reward.reward_kwargs.{key}": value for key, value in options.items()})
    with pytest.raises(ValueError, match=rf"score_timeout_s=\S+ must exceed {bound} s"):
        load_reward_manager(bad, reward_worker.input_tokenizer)
    good = with_options(bad, **{"reward.reward_kwargs.score_timeout_s": bound + 1})
    if "sandbox_fusion_url" not in options:
        assert load_reward_manager(good, reward_worker.input_tokenizer).score_timeout_s == bound + 1


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("max_parallel", 0, "max_parallel"), ("score_timeout_s", -1, "score_timeout_s"), ("sandbox", "x", "sandbox")],
)
def test_bad_manager_and_scorer_option_values_fail_at_start_up(config, reward_worker, option, value, message):
    bad = with_options(config, **{f"reward.reward_kwargs.{option}": value})
    with pytest.raises(ValueError, match=message):
        load_reward_manager(bad, reward_worker.input_tokenizer)


def parquet(path: Path, sources: list[str]) -> str:
    import pandas as pd

    pd.DataFrame({"data_source": sources, "prompt": ["q"] * len(sources)}).to_parquet(path)
    return str(path)


def test_an_unknown_data_source_in_the_dataset_fails_at_start_up(config, reward_worker, tmp_path):
    files = {"data.train_files": [parquet(tmp_path / "train.parquet", ["sciknoweval", "gsm8k"])]}
    with pytest.raises(ValueError, match="no CREDIT scorer for data_source 'gsm8k'"):
        load_reward_manager(with_options(config, **files), reward_worker.input_tokenizer)
    files = {"data.train_files": [parquet(tmp_path / "ok.parquet", ["sciknoweval", "toolalpaca"])]}
    assert isinstance(
        load_reward_manager(with_options(config, **files), reward_worker.input_tokenizer), RewardManagerBase
    )


def test_without_isolation_code_is_refused_at_start_up_unless_unsafe_local(
    config, reward_worker, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(sandbox, "bwrap_executable", lambda: None)
    monkeypatch.setattr(sandbox, "_probed", {})
    monkeypatch.setattr(sandbox, "_warned", set())
    code_data = with_options(config, **{"data.train_files": [parquet(tmp_path / "code.parquet", ["livecodebench"])]})
    with pytest.raises(sandbox.SandboxUnavailableError, match="bubblewrap is not installed.*unsafe_local"):
        load_reward_manager(code_data, reward_worker.input_tokenizer)
    # A science-only dataset does not need the sandbox.
    science = with_options(config, **{"data.train_files": [parquet(tmp_path / "sci.parquet", ["sciknoweval"])]})
    load_reward_manager(science, reward_worker.input_tokenizer)

    unsafe = with_options(code_data, **{"reward.reward_kwargs.sandbox": "unsafe_local"})
    with caplog.at_level("WARNING", logger=sandbox.__name__):
        manager = load_reward_manager(unsafe, reward_worker.input_tokenizer)
        load_reward_manager(unsafe, reward_worker.input_tokenizer)
    assert sum("WITHOUT isolation" in record.message for record in caplog.records) == 1, "warned once"
    right = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    data = make_batch(manager.tokenizer, [right], data_source=["code"], reward_model=[{"ground_truth": ADD_TESTS}])
    assert asyncio.run(manager.run_single(data))["reward_score"] == 1.0


def test_the_tiny_demo_task_scores_through_the_manager(config, reward_worker):
    """As the demo recipe configures it: the development task through verl's custom reward function."""
    from credit_plugin.dev.tiny import task as tiny_task

    custom = with_options(
        config,
        **{
            "reward.custom_reward_function.path": "pkg://credit_plugin.dev.tiny.task",
            "reward.custom_reward_function.name": "compute_score",
        },
    )
    reward_worker = copy.copy(reward_worker)
    reward_worker.config = custom
    reward_worker.reward_manager = load_reward_manager(custom, reward_worker.input_tokenizer)
    manager = reward_worker.reward_manager
    ground_truth = "7"
    data = make_batch(
        manager.tokenizer,
        ["Answer: 7", "Answer: 3"],
        data_source=[tiny_task.DATA_SOURCE] * 2,
        reward_model=[{"ground_truth": ground_truth}] * 2,
    )
    outputs = asyncio.run(reward_worker.compute_score_batch(data))
    assert [out["reward_score"] for out in outputs] == [1.0, 0.0]
    assert (
        outputs[1]["reward_extra_info"]["feedback"]
        == tiny_task.compute_score(tiny_task.DATA_SOURCE, "Answer: 3", ground_truth, {"num_turns": None})["feedback"]
    )
    assert all(out["reward_extra_info"]["reward_error"] == 0.0 for out in outputs)
