"""``recipes/tiny_cpu/demo.py`` keeps a run's metrics history when the run is resumed after a crash.

The training process is a stand-in that logs as verl's ``FileLogger`` does (opening its file for writing:
pinned by the first test) and resumes from ``latest_checkpointed_iteration.txt`` as verl does.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TRAINING = r"""
import json, os, sys
checkpoints, crash_at, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
latest = os.path.join(checkpoints, "latest_checkpointed_iteration.txt")
start = int(open(latest).read()) + 1 if os.path.exists(latest) else 1
logger = open(os.environ["VERL_FILE_LOGGER_PATH"], "wb", buffering=0)
for step in range(start, total + 1):
    logger.write(json.dumps({"step": step, "data": {"attempt_start": start}}).encode() + b"\n")
    if step % 2 == 0:  # trainer.save_freq=2
        os.makedirs(checkpoints, exist_ok=True)
        open(latest, "w").write(str(step))
    if step == crash_at:
        sys.exit(1)
"""


@pytest.fixture
def demo(monkeypatch):
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    spec = importlib.util.spec_from_file_location("tiny_cpu_demo", REPO / "recipes/tiny_cpu/demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(path: Path) -> list[tuple[int, int]]:
    return [(r["step"], r["data"]["attempt_start"]) for r in map(json.loads, path.read_text().splitlines())]


def test_verls_file_logger_starts_its_file_afresh(monkeypatch, tmp_path):
    from verl.utils.tracking import FileLogger

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "data": {}}\n')
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
    logger = FileLogger("project", "experiment")
    logger.log({"x": 1.0}, 2)
    logger.finish()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [2]


def test_a_resumed_run_keeps_the_steps_before_its_checkpoint(demo, monkeypatch, tmp_path):
    crash_at = {"value": 3}

    def command(algo, run_dir, model, train, val, steps, extra, config=None):
        return [sys.executable, "-c", TRAINING, str(run_dir / "checkpoints"), str(crash_at["value"]), str(steps)]

    monkeypatch.setattr(demo, "command", command)
    monkeypatch.setattr(demo, "POLL_S", 0.1)
    assets = (tmp_path / "model", tmp_path / "train", tmp_path / "val")
    with pytest.raises(SystemExit, match="failed with exit code 1"):
        demo.run("credit", tmp_path, assets, 5, [])
    metrics = tmp_path / "credit/metrics.jsonl"
    assert _records(metrics) == [(1, 1), (2, 1), (3, 1)], "killed after step 3, checkpoint at step 2"

    crash_at["value"] = 0
    assert demo.run("credit", tmp_path, assets, 5, []) == metrics
    assert _records(metrics) == [(1, 1), (2, 1), (3, 3), (4, 3), (5, 3)], "history kept, step 3 from the resume"

    # a fresh start (resume disabled) does not keep an old history
    (tmp_path / "credit/checkpoints/latest_checkpointed_iteration.txt").unlink()
    demo.run("credit", tmp_path, assets, 2, [])
    assert _records(metrics) == [(1, 1), (2, 1)]


def test_compare_shows_the_reward_of_the_first_and_the_last_half(demo, tmp_path, capsys):
    rewards = [0.2, 0.4, 0.6, 1.0]
    records = [{"step": 0, "data": {"val-core/credit_tiny/acc/mean@4": 0.5}}]
    records += [{"step": s + 1, "data": {"critic/score/mean": r, "credit/pmi_mean": -r}} for s, r in enumerate(rewards)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    demo.compare({"credit": path})
    header, row = capsys.readouterr().out.strip().splitlines()
    assert header.split()[1:5] == ["reward", "1st", "reward", "2nd"]
    cells = row.split()
    assert cells[0] == "credit" and float(cells[1]) == pytest.approx(0.3) and float(cells[2]) == pytest.approx(0.8)
    assert float(cells[3]) == pytest.approx(-0.8)  # pMI over the last half
