# kvl developer tasks. `make install` once, then `make test`. Everything runs from .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch (the local mirror has it). Bring your own CUDA build instead with
# `make install TORCH=` after installing it into $(VENV) yourself.
TORCH ?= torch==2.13.0

.PHONY: install test test-slow bench lint clean nano

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first and pinned: left to resolve our `torch>=2.4` alone, pip would fetch a multi-GB CUDA build.
install: $(BIN)/python
	$(if $(TORCH),$(BIN)/pip install $(TORCH))
	$(BIN)/pip install -e ".[all,test]"

test:
	$(BIN)/pytest

test-slow:
	$(BIN)/pytest -m slow

bench:
	@set -e; for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f; done

# Retrain the built-in kvl-nano from scratch through every stage (about 100 minutes on 2 CPU cores, see
# docs/nano.md), evaluate it on the held-out sets and ship it into the package with its figures.
# `make nano SCALE=10` trains 10x the steps on 10x the data (for a GPU or many cores).
SCALE ?= 1
NANO_RUN = runs/nano$(if $(filter 1,$(SCALE)),,-x$(SCALE))
nano:
	$(BIN)/kvl train --recipe nano --scale $(SCALE) --out $(NANO_RUN) --resume --export kvl_core/assets/kvl-nano
	mkdir -p docs/nano
	cp $(NANO_RUN)/recipe.png docs/nano/recipe.png
	for s in $$(ls $(NANO_RUN)/*/loss.png | xargs -n1 dirname | xargs -n1 basename); do cp $(NANO_RUN)/$$s/loss.png docs/nano/$$s-loss.png; done

# The official scorers for the cross-check (bench/eval_fidelity.py, tests/tasks/eval/test_fidelity.py): olmocr
# and lmms-eval without their own dependencies (GPU/cloud stacks their scoring code never calls), the few modules
# that code imports, and playwright for olmOCR's KaTeX math tests (these also need `apt-get install chromium`).
.PHONY: eval-check-deps eval-fidelity
EVAL_CHECK ?= olmocr==0.4.27 lmms-eval==0.7.3
eval-check-deps:
	$(BIN)/pip install --no-deps $(EVAL_CHECK)
	$(BIN)/pip install -e ".[eval-check]" playwright

# Every kvl eval scorer against the official one on the same predictions: bench/results/eval_fidelity.json.
eval-fidelity:
	$(BIN)/python bench/eval_fidelity.py

# Optional: uses ruff if it is installed (venv or PATH); kvl does not depend on a linter.
lint:
	@if [ -x $(BIN)/ruff ]; then $(BIN)/ruff check .; \
	elif command -v ruff >/dev/null 2>&1; then ruff check .; \
	else echo "lint: ruff not installed, skipped (pip install ruff)"; fi

# Leaves .venv alone: rebuilding it means reinstalling torch.
clean:
	rm -rf build dist .pytest_cache bench/results *.egg-info plugins/*/build plugins/*/*.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

# The GPU check (docs/gpu.md): one prepared script, <= 8 minutes on one H200, gpu_check.json + a table
# in bench/results/. `make gpu-check-smoke` rehearses every part on the CPU (the default tests run it too).
# On the GPU machine there is no .venv: plain python3 with the wheels of `make gpu-wheels` installed.
.PHONY: gpu-check gpu-check-smoke gpu-wheels
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	$(GPU_PYTHON) bench/gpu_check.py --out bench/results
gpu-check-smoke:
	$(GPU_PYTHON) bench/gpu_check.py --smoke --out bench/results/smoke
# What a GPU machine call carries (bench/gpu_carry/, git-ignored, ~57 MB): binary wheels of
# bench/gpu_requirements.txt for the GPU machine's Python (GPU_PY) and the reference fixture.
GPU_PY ?= 3.11
gpu-wheels:
	$(BIN)/pip download --only-binary=:all: --python-version $(GPU_PY) --platform manylinux2014_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d bench/gpu_carry/wheels -r bench/gpu_requirements.txt
	rm -rf bench/gpu_carry/kimi_vl_tiny && cp -r ../shared/fixtures/kimi_vl_tiny bench/gpu_carry/kimi_vl_tiny
