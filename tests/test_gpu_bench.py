"""``scripts/gpu_bench.py`` runs where only torch and transformers are installed: its quick mode on CPU, with verl,
Ray and vLLM made unimportable, writes every measurement with finite, positive times and ratios."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

# a fresh process importing torch and transformers and running two tiny models (about 30 s on 2 cores)
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# As on a bare accelerator machine: importing verl, Ray or vLLM fails (a None entry in sys.modules).
BARE = """
import runpy, sys
for name in ("verl", "ray", "vllm", "megatron"):
    sys.modules[name] = None
sys.argv = ["gpu_bench.py", "--quick", "--device", "cpu", "--ks", "1", "4", "--out", sys.argv[1]]
runpy.run_path({script!r}, run_name="__main__")
loaded = sorted(m for m in sys.modules if m.startswith(("verl.", "ray.", "vllm.")) and sys.modules[m] is not None)
print("LOADED", loaded)
"""


def test_quick_mode_runs_without_verl_and_writes_every_measurement(tmp_path):
    out = tmp_path / "results.json"
    code = BARE.format(script=str(REPO / "scripts" / "gpu_bench.py"))
    result = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "LOADED []"
    assert "device: " in result.stdout and "ratios:" in result.stdout
    report = json.loads(out.read_text())
    assert report["setting"]["model"] == "tiny" and report["setting"]["vocab_size"] == 2048
    passes = report["passes"]
    assert set(passes) == {
        "policy_log_prob",
        "teacher_1+1",
        "teacher_1+4",
        "frozen_teacher",
        "trust_region_teacher",
        "sdpo_token_rewards",
        "credit_token_rewards_K4",
    }
    # the teacher pass scores 1 + K variants of every sample, each longer by the feedback context
    rows, setting = report["setting"]["rows"], report["setting"]
    assert passes["teacher_1+4"]["rows"] == 5 * rows and passes["policy_log_prob"]["rows"] == rows
    teacher_row = setting["prompt_tokens"] + setting["feedback_tokens"] + setting["response_tokens"]
    assert passes["teacher_1+1"]["tokens"] == 2 * rows * teacher_row
    assert all(math.isfinite(p["seconds"]) and p["seconds"] > 0 for p in passes.values())
    assert set(report["ratios"]) == {
        "teacher_1+1 / policy_log_prob",
        "teacher_1+4 / policy_log_prob",
        "trust_region_teacher / frozen_teacher",
        "credit_token_rewards_K4 / sdpo_token_rewards",
    }
    assert all(math.isfinite(r) and r > 0 for r in report["ratios"].values())


def test_trust_region_pass_is_the_mix_of_both_models_log_probs():
    """The bench's trust-region pass computes what credit_plugin.trust_region defines (chunking included)."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gpu_bench
    finally:
        sys.path.remove(str(REPO / "scripts"))
    import torch

    frozen = gpu_bench.build_model("tiny", torch.float32, torch.device("cpu"), seed=1)
    current = gpu_bench.build_model("tiny", torch.float32, torch.device("cpu"), seed=0)
    rows = torch.randint(0, frozen.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    got = gpu_bench.trust_region_pass(frozen, current, rows, response_tokens=5, micro_batch=2)
    with torch.no_grad():
        mixed = torch.lerp(frozen(rows).logits, current(rows).logits, gpu_bench.TAU)[:, -6:-1]
    expected = torch.log_softmax(mixed.float(), -1).gather(-1, rows[:, -5:, None])[..., 0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # and the plain pass is the model's own label log-probs
    plain = gpu_bench.response_log_probs(current, rows, response_tokens=5, micro_batch=3)
    with torch.no_grad():
        own = torch.log_softmax(current(rows).logits[:, -6:-1].float(), -1).gather(-1, rows[:, -5:, None])[..., 0]
    torch.testing.assert_close(plain, own, atol=1e-5, rtol=1e-5)
