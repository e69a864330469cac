"""The three converters of ``credit_plugin.data`` on fixture files in each upstream format (tests/fixtures/data).

Converted rows go through verl's own ``RLHFDataset`` and the plugin's scorers: a reference answer built from the
row's ground truth scores 1, a wrong one 0 with feedback. Malformed rows are reported with index and reason (or
fail the run), filtered rows are counted, and evaluation rows never share their grading data with training rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from credit_plugin.data import Report, livecodebench, load_rows, sciknoweval, toolalpaca
from credit_plugin.data.__main__ import main
from credit_plugin.scorers import compute_score

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def _convert(module, name: str, **options):
    report = Report(task=module.__name__)
    return module.convert(load_rows(str(FIXTURES / name)), report, **options), report


def _user(row: dict) -> str:
    return row["prompt"][-1]["content"]


# ------------------------------------------------------------------ SciKnowEval


def test_sciknoweval_keeps_l3_mcq_reports_malformed_and_filtered_rows():
    splits, report = _convert(sciknoweval, "sciknoweval.jsonl", val_fraction=0.3, seed=0)
    rows = splits["train"] + splits["test"]
    assert len(rows) == report.converted == 8
    assert report.malformed == [
        ("10", "answerKey 'E' is not one of the option labels"),
        ("11", "field 'question' is missing or empty"),
        ("12", "choices.label must be ['A', 'B', 'C', 'D'], got ['1', '2', '3', '4']"),
    ]
    assert report.filtered == {"level L1 (only L3 is kept)": 1, "type open-ended-qa (only mcq-* is kept)": 1}
    assert {row["data_source"] for row in rows} == {f"sciknoweval/{d}" for d in sciknoweval.DOMAINS}
    assert splits["test"], "a 0.3 hold-out of 8 questions with seed 0 holds some out"
    assert not {_user(r) for r in splits["train"]} & {_user(r) for r in splits["test"]}
    for row in rows:
        truth = row["reward_model"]["ground_truth"]
        assert f"\n{truth}. " in _user(row), "the answer letter labels one of the listed options"
        assert compute_score(row["data_source"], f"The answer is \\boxed{{{truth}}}.", truth)["score"] == 1.0
        wrong = "B" if truth == "A" else "A"
        result = compute_score(row["data_source"], f"\\boxed{{{wrong}}}", truth)
        assert result["score"] == 0.0 and "incorrect" in result["feedback"]


def test_sciknoweval_split_is_seeded_and_domains_select():
    first, _ = _convert(sciknoweval, "sciknoweval.jsonl", val_fraction=0.5, seed=3)
    again, _ = _convert(sciknoweval, "sciknoweval.jsonl", val_fraction=0.5, seed=3)
    other, _ = _convert(sciknoweval, "sciknoweval.jsonl", val_fraction=0.5, seed=4)
    assert [_user(r) for r in first["test"]] == [_user(r) for r in again["test"]]
    assert [_user(r) for r in first["test"]] != [_user(r) for r in other["test"]]
    chemistry, report = _convert(sciknoweval, "sciknoweval.jsonl", val_fraction=0.0, domains=("chemistry",))
    assert {r["data_source"] for r in chemistry["train"]} == {"sciknoweval/chemistry"} and not chemistry["test"]
    assert report.filtered["domain biology (not in ['chemistry'])"] == 4, "row 11 is left out before its check"
    with pytest.raises(ValueError, match="unknown SciKnowEval domain"):
        _convert(sciknoweval, "sciknoweval.jsonl", domains=("astronomy",))
    with pytest.raises(ValueError, match="val_fraction must be in"):
        _convert(sciknoweval, "sciknoweval.jsonl", val_fraction=1.0)


def test_rows_load_through_verl_rlhf_dataset(tmp_path, tokenizer):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    src = str(FIXTURES / "sciknoweval.jsonl")
    main(["prepare", "--task", "sciknoweval", "--src", src, "--out", str(tmp_path), "--val-fraction", "0.3"])
    # verl's length filter hashes the tokenizer through `datasets` (a minute here): the length is checked below
    settings = {"max_prompt_length": 2048, "cache_dir": str(tmp_path / "cache"), "filter_overlong_prompts": False}
    config = OmegaConf.create(settings)
    dataset = RLHFDataset(str(tmp_path / "train.parquet"), tokenizer, config)
    raw = pd.read_parquet(tmp_path / "train.parquet")
    assert len(dataset) == len(raw) > 0
    item = dataset[0]
    assert item["raw_prompt"] == [{"role": "user", "content": raw.iloc[0]["prompt"][0]["content"]}]
    assert item["reward_model"]["ground_truth"] in "ABCD" and item["extra_info"]["split"] == "train"
    assert item["data_source"].startswith("sciknoweval/")
    prompts = [dataset[i]["raw_prompt"] for i in range(len(dataset))]
    lengths = [len(tokenizer.apply_chat_template(p, add_generation_prompt=True)["input_ids"]) for p in prompts]
    assert 30 < max(lengths) <= 2048, "the recipes' max_prompt_length"


# ------------------------------------------------------------------ ToolAlpaca


def _react(ground_truth: str) -> str:
    calls = json.loads(ground_truth)
    return "\n".join(f"Action: {c['name']}\nAction Input: {json.dumps(c['arguments'])}" for c in calls)


def test_toolalpaca_instances_become_rows_with_reference_calls():
    splits, report = _convert(toolalpaca, "toolalpaca_train.json", val_fraction=0.0)
    train = splits["train"]
    assert [r["extra_info"]["api"] for r in train] == [
        "WeatherNow",
        "WeatherNow",
        "OpenLibrary",
        "RecipeBox",
        "RecipeBox",
    ]
    assert [index for index, _ in report.malformed] == ["0.2", "0.3", "3"]
    assert "not JSON" in report.malformed[0][1] and "no reference call" in report.malformed[1][1]
    two_calls = json.loads(train[1]["reward_model"]["ground_truth"])
    assert two_calls == [
        {"name": "getForecast", "arguments": {"city": "Oslo", "days": 3}},
        {"name": "getCurrentWeather", "arguments": {"city": "Oslo"}},
    ]
    for row in train:
        assert row["prompt"][0]["role"] == "system" and "Action Input:" in row["prompt"][0]["content"]
        truth = row["reward_model"]["ground_truth"]
        assert compute_score("toolalpaca", _react(truth), truth)["score"] == 1.0
    wrong = compute_score("toolalpaca", 'Action: getForecast\nAction Input: {"city": "Oslo"}', two_calls)
    assert wrong["score"] == 0.0 and "expected 2" in wrong["feedback"]


def test_toolalpaca_evaluation_tools_never_train():
    splits, report = _convert(
        toolalpaca, "toolalpaca_train.json", val_rows=load_rows(str(FIXTURES / "toolalpaca_eval.json"))
    )
    train_keys = {(r["extra_info"]["api"], _user(r)) for r in splits["train"]}
    test_keys = {(r["extra_info"]["api"], _user(r)) for r in splits["test"]}
    assert test_keys == {("CurrencyRates", "Convert 10 USD to EUR."), ("RecipeBox", "How do I make pancakes?")}
    assert not train_keys & test_keys
    assert report.filtered == {"train instance also in --val-src (kept for evaluation only)": 1}
    by_api, _ = _convert(toolalpaca, "toolalpaca_train.json", val_fraction=0.5, seed=1)
    train_apis = {r["extra_info"]["api"] for r in by_api["train"]}
    assert train_apis and by_api["test"] and not train_apis & {r["extra_info"]["api"] for r in by_api["test"]}


# ------------------------------------------------------------------ LiveCodeBench


def test_livecodebench_public_tests_train_private_tests_evaluate():
    splits, report = _convert(livecodebench, "livecodebench.jsonl", since="2025-01-01")
    assert report.filtered == {"contest_date before 2025-01-01": 1}
    assert [index for index, _ in report.malformed] == ["3", "4", "5"]
    assert "public_test_cases holds no tests" in report.malformed[0][1]
    assert "func_name" in report.malformed[1][1] and "neither JSON nor" in report.malformed[2][1]
    upstream = {row["question_id"]: row for row in load_rows(str(FIXTURES / "livecodebench.jsonl"))}
    for split, field in (("train", "public_test_cases"), ("test", "private_test_cases")):
        assert [r["extra_info"]["question_id"] for r in splits[split]] == ["abc001_a", "3001"]
        for row in splits[split]:
            truth = json.loads(row["reward_model"]["ground_truth"])
            expected = livecodebench.decode_tests(upstream[row["extra_info"]["question_id"]][field], field)
            assert truth["tests"] == expected and row["extra_info"]["split"] == split
    private = json.loads(splits["test"][0]["reward_model"]["ground_truth"])["tests"]
    assert [t["input"] for t in private] == ["10 20\n", "-1 1\n"], "decoded from base64(zlib(pickle(json)))"
    assert "```python\nclass Solution:" in _user(splits["train"][1])


@pytest.mark.parametrize("split", ["train", "test"])
def test_livecodebench_rows_grade_real_programs(split):
    splits, _ = _convert(livecodebench, "livecodebench.jsonl")
    stdin_row, functional_row = splits[split][0], splits[split][1]
    adder = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    search = (
        "```python\nclass Solution:\n    def search(self, nums, target):\n"
        "        return nums.index(target) if target in nums else -1\n```"
    )
    for row, program in ((stdin_row, adder), (functional_row, search)):
        truth, info = row["reward_model"]["ground_truth"], row["extra_info"]
        assert compute_score(row["data_source"], program, truth, info)["score"] == 1.0
    wrong = compute_score(
        stdin_row["data_source"], "```python\nprint(0)\n```", stdin_row["reward_model"]["ground_truth"]
    )
    assert wrong["score"] == 0.0 and wrong["feedback"]


def test_livecodebench_problem_hold_out_keeps_problems_out_of_training():
    splits, _ = _convert(livecodebench, "livecodebench.jsonl", val_fraction=0.99)
    assert not splits["train"] and len(splits["test"]) == 3


def test_pickled_test_field_may_not_reference_code():
    import base64
    import pickle
    import zlib

    payload = base64.b64encode(zlib.compress(pickle.dumps(Path("x")))).decode()
    with pytest.raises(ValueError, match="refusing to load"):
        livecodebench.decode_tests(payload, "private_test_cases")


# ------------------------------------------------------------------ command line


def test_cli_writes_parquet_and_report_and_rejects_on_request(tmp_path, capsys):
    src = str(FIXTURES / "livecodebench.jsonl")
    main(["prepare", "--task", "livecodebench", "--src", src, "--out", str(tmp_path / "ok")])
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert report["train_rows"] == report["test_rows"] == 3 and len(report["malformed"]) == 3
    assert "malformed row 4: functional tests but no metadata.func_name" in capsys.readouterr().err
    assert len(pd.read_parquet(tmp_path / "ok" / "test.parquet")) == 3
    with pytest.raises(SystemExit, match=r"3 malformed row\(s\)[\s\S]*row 5: private_test_cases"):
        main(
            [
                "prepare",
                "--task",
                "livecodebench",
                "--src",
                src,
                "--out",
                str(tmp_path / "no"),
                "--on-malformed",
                "error",
            ]
        )
    assert not (tmp_path / "no").exists(), "a rejected run writes nothing"
    with pytest.raises(SystemExit):
        main(["prepare", "--task", "toolalpaca", "--src", src, "--out", str(tmp_path), "--domains", "physics"])
    assert "--domains applies to --task sciknoweval only" in capsys.readouterr().err


def test_src_may_be_a_dataset_folder_loaded_with_datasets(tmp_path):
    folder = tmp_path / "SciKnowEval"
    folder.mkdir()
    (folder / "test.jsonl").write_text((FIXTURES / "sciknoweval.jsonl").read_text())
    rows = load_rows(str(folder), split="test")
    assert len(rows) == 13 and rows[0]["answerKey"] == "B"
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_rows(str(tmp_path / "missing.jsonl"))
    (tmp_path / "pretty.json").write_text(json.dumps({"rows": []}, indent=1))
    with pytest.raises(ValueError, match=r"pretty.json:1: not one JSON object per line"):
        load_rows(str(tmp_path / "pretty.json"))
