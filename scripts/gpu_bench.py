"""What CREDIT's teacher pass costs on a GPU, on a random-initialised model of a real size; needs only torch and
transformers (no verl, Ray or vLLM: a bare accelerator machine with a CUDA torch will do).

Measured on the same rows (``--rows`` samples of ``--prompt-tokens`` + ``--response-tokens``; the teacher rows add
``--feedback-tokens`` of reprompt context), each timed after a warm-up, median of ``--repeats``:

- the policy's log-prob pass (verl's ``compute_log_prob``: a no-grad forward, label log-probs of the response);
- the teacher pass for ``1 + K`` variants (the feedback-conditioned row and K contrast rows), K in ``--ks``;
- the ``trust_region`` teacher pass (the frozen and the current model's forwards, their logits mixed in float32:
  ``credit_plugin.trust_region``), against the frozen teacher pass on the same rows;
- CREDIT's token rewards (``credit_plugin.rewards.credit_token_rewards``) against SDPO's, at ``--reward-rows``.

Time and peak memory (CUDA only) of each, ratios, the device's name; everything is written to ``--out`` (JSON).

    python scripts/gpu_bench.py                          # Qwen3-8B shape, bf16, real vocabulary (151936)
    python scripts/gpu_bench.py --model qwen3-1.7b
    python scripts/gpu_bench.py --quick --device cpu     # a tiny config in seconds (what CI runs)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the plugin's math modules from the checkout: importable without verl

from credit_plugin.rewards import credit_token_rewards, sdpo_token_rewards  # noqa: E402
from credit_plugin.trust_region import label_log_probs, trust_region_log_probs  # noqa: E402

# Model shapes (Qwen3's published configs); the weights are random, so nothing is downloaded.
QWEN3 = dict(
    vocab_size=151936,
    head_dim=128,
    hidden_act="silu",
    max_position_embeddings=40960,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    attention_bias=False,
)
MODELS = {
    "qwen3-8b": dict(
        QWEN3,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
    "qwen3-1.7b": dict(
        QWEN3,
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
    # --quick: the same architecture shrunk to run on a CPU in seconds
    "tiny": dict(
        QWEN3,
        vocab_size=2048,
        head_dim=16,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
}
# Positions whose logits exist at once (in the model's dtype, then float32 for the log-softmax), as verl chunks.
LOGIT_CHUNK = 1024
TAU = 0.05  # credit.teacher_update_rate: the trust-region mix


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, repeats: int) -> dict:
    """Median wall time of ``fn`` (after one warm-up call) and, on CUDA, its peak allocated memory."""
    fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    result = {"seconds": statistics.median(times), "times": times}
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["peak_over_weights_gib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**30
    return result


def build_model(name: str, dtype: torch.dtype, device: torch.device, seed: int) -> transformers.PreTrainedModel:
    config = transformers.Qwen3Config(**MODELS[name], attn_implementation="sdpa")
    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.Qwen3ForCausalLM(config).to(dtype)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def hidden_states(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Shape (b, L, H): the last layer's states (the LM head is applied per chunk of positions)."""
    return model.model(input_ids=input_ids).last_hidden_state


@torch.no_grad()
def response_log_probs(model, rows: torch.Tensor, response_tokens: int, micro_batch: int) -> torch.Tensor:
    """Label log-probs of the last ``response_tokens`` tokens of each row, shape (N, R), float32; rows (N, L) go
    through the model ``micro_batch`` at a time, the LM head ``LOGIT_CHUNK`` positions at a time."""
    out = []
    for batch in rows.split(micro_batch):
        states = hidden_states(model, batch)[:, -response_tokens - 1 : -1].reshape(-1, model.config.hidden_size)
        labels = batch[:, -response_tokens:].reshape(-1)
        scores = torch.cat(
            [
                label_log_probs(model.lm_head(part).float(), lab)
                for part, lab in zip(states.split(LOGIT_CHUNK), labels.split(LOGIT_CHUNK), strict=True)
            ]
        )
        out.append(scores.view(batch.shape[0], response_tokens))
    return torch.cat(out)


@torch.no_grad()
def trust_region_pass(frozen, current, rows: torch.Tensor, response_tokens: int, micro_batch: int) -> torch.Tensor:
    """The ``trust_region`` teacher: both models' forwards on each micro-batch, their logits mixed in float32
    (``trust_region_log_probs``), ``LOGIT_CHUNK`` positions at a time; shape (N, R)."""
    out = []
    hidden = frozen.config.hidden_size
    for batch in rows.split(micro_batch):
        positions = slice(-response_tokens - 1, -1)
        frozen_states = hidden_states(frozen, batch)[:, positions].reshape(-1, hidden)
        current_states = hidden_states(current, batch)[:, positions].reshape(-1, hidden)
        labels = batch[:, -response_tokens:].reshape(-1)
        scores = [
            trust_region_log_probs(frozen.lm_head(f), current.lm_head(c), lab, TAU, chunk_tokens=LOGIT_CHUNK)
            for f, c, lab in zip(
                frozen_states.split(LOGIT_CHUNK),
                current_states.split(LOGIT_CHUNK),
                labels.split(LOGIT_CHUNK),
                strict=True,
            )
        ]
        out.append(torch.cat(scores).view(batch.shape[0], response_tokens))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="qwen3-8b")
    parser.add_argument("--quick", action="store_true", help="tiny config, few tokens, one repeat (runs on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    parser.add_argument("--rows", type=int, default=8, help="samples (policy rows) per pass")
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--response-tokens", type=int, default=2048)
    parser.add_argument("--feedback-tokens", type=int, default=512, help="reprompt context the teacher rows add")
    parser.add_argument("--micro-batch", type=int, default=2, help="rows per forward")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4], help="negatives K (1 + K teacher variants)")
    parser.add_argument("--reward-rows", type=int, default=256, help="rows of the token-reward measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_bench" / "results.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.rows, args.prompt_tokens, args.response_tokens = "tiny", 2, 16, 32
        args.feedback_tokens, args.reward_rows, args.repeats = 8, 16, 1
    if min(args.rows, args.prompt_tokens, args.response_tokens, args.micro_batch, args.repeats, *args.ks) < 1:
        parser.error("--rows, token counts, --micro-batch, --repeats and --ks must be positive")

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device_name} ({device}), torch {torch.__version__}, transformers {transformers.__version__}")
    policy = build_model(args.model, dtype, device, seed=0)
    vocab = policy.config.vocab_size
    params = sum(p.numel() for p in policy.parameters())
    print(f"model: {args.model} shape, {params / 1e9:.2f}B parameters, {args.dtype}, vocabulary {vocab} (random init)")

    generator = torch.Generator(device="cpu").manual_seed(0)
    prompt_len, response_len, feedback_len = args.prompt_tokens, args.response_tokens, args.feedback_tokens

    def tokens(rows: int, length: int) -> torch.Tensor:
        return torch.randint(0, vocab, (rows, length), generator=generator).to(device)

    prompts, responses = tokens(args.rows, prompt_len), tokens(args.rows, response_len)
    feedback = tokens(args.rows, feedback_len)
    policy_rows = torch.cat([prompts, responses], dim=1)
    # the teacher's row: the sample's prompt with its feedback, then the same response; a contrast row swaps in the
    # prompt of another sample (a rotation, as negatives from other prompt groups)
    teacher_rows = torch.cat([prompts, feedback, responses], dim=1)

    def variants(k: int) -> torch.Tensor:
        swapped = [torch.cat([prompts.roll(j, 0), feedback, responses], dim=1) for j in range(1, k + 1)]
        return torch.cat([teacher_rows, *swapped])

    results: dict = {
        "device": device_name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "setting": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "params": params,
            "vocab_size": vocab,
        },
        "passes": {},
        "ratios": {},
    }
    passes, ratios = results["passes"], results["ratios"]

    def run(name: str, fn: Callable[[], object], rows: int, tokens_per_row: int) -> dict:
        result = measure(fn, device, args.repeats)
        result.update(rows=rows, tokens=rows * tokens_per_row)
        passes[name] = result
        memory = f", peak {result['peak_gib']:.2f} GiB" if "peak_gib" in result else ""
        print(f"  {name:<28} {result['seconds'] * 1e3:10.1f} ms  ({rows} rows x {tokens_per_row} tokens{memory})")
        return result

    print("passes (median of repeats):")
    run(
        "policy_log_prob",
        lambda: response_log_probs(policy, policy_rows, response_len, args.micro_batch),
        args.rows,
        prompt_len + response_len,
    )
    for k in args.ks:
        rows = variants(k)
        run(
            f"teacher_1+{k}",
            lambda rows=rows: response_log_probs(policy, rows, response_len, args.micro_batch),
            rows.shape[0],
            rows.shape[1],
        )
        ratios[f"teacher_1+{k} / policy_log_prob"] = (
            passes[f"teacher_1+{k}"]["seconds"] / passes["policy_log_prob"]["seconds"]
        )
    # trust region: a second model (the frozen one) next to the current one, on the teacher rows of K = 0
    frozen = build_model(args.model, dtype, device, seed=1)
    run(
        "frozen_teacher",
        lambda: response_log_probs(frozen, teacher_rows, response_len, args.micro_batch),
        args.rows,
        teacher_rows.shape[1],
    )
    run(
        "trust_region_teacher",
        lambda: trust_region_pass(frozen, policy, teacher_rows, response_len, args.micro_batch),
        args.rows,
        teacher_rows.shape[1],
    )
    ratios["trust_region_teacher / frozen_teacher"] = (
        passes["trust_region_teacher"]["seconds"] / passes["frozen_teacher"]["seconds"]
    )
    # the token rewards at the response length, K = max(ks)
    k = max(args.ks)
    shape = (args.reward_rows, response_len)
    teacher_lp = -torch.rand(shape, generator=generator).to(device) * 3
    student_lp = -torch.rand(shape, generator=generator).to(device) * 3
    contrast_lp = -torch.rand((args.reward_rows, k, response_len), generator=generator).to(device) * 3
    mask = torch.ones(shape, device=device)
    run("sdpo_token_rewards", lambda: sdpo_token_rewards(teacher_lp, student_lp, mask), args.reward_rows, response_len)
    run(
        f"credit_token_rewards_K{k}",
        lambda: credit_token_rewards(teacher_lp, contrast_lp, student_lp, mask, contrast_coef=0.25),
        args.reward_rows,
        response_len,
    )
    ratios[f"credit_token_rewards_K{k} / sdpo_token_rewards"] = (
        passes[f"credit_token_rewards_K{k}"]["seconds"] / passes["sdpo_token_rewards"]["seconds"]
    )
    print("ratios:")
    for name, value in ratios.items():
        print(f"  {name:<48} {value:6.2f}")
    if not all(math.isfinite(value) and value > 0 for value in ratios.values()):
        raise RuntimeError(f"a ratio is not a positive number: {ratios}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
