# Two commands do the whole set-up on a fresh machine:
#   make train   virtualenv + pinned install + train configs/cnn.yaml
#   make test    virtualenv + pinned install + the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Offline data: the original MNIST/Fashion-MNIST IDX files, when the shared folder is there.
SHARED_DATA := $(wildcard ../shared/datasets)
ifneq ($(SHARED_DATA),)
export CNNLAB_DATA_DIR ?= $(abspath $(SHARED_DATA))
endif
CONFIG ?= configs/cnn.yaml

.PHONY: install train test bench clean example-data test-system

# Real parts the tests start (README, "Tests"): a browser for the served page, a database
# server for a shared tuning study; installed with apt-get when missing.
DEBIAN_TEST_PACKAGES := chromium chromium-driver postgresql

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[cpu,test,fast-png,mlflow]'
	touch $@

train: install
	$(BIN)/cnnlab train $(CONFIG)

# the small folder data set of configs/folder_example.yaml (git-ignored)
example-data: install
	$(BIN)/python examples/make_shapes.py examples/shapes

test-system:
	sh scripts/need-debian-packages $(DEBIAN_TEST_PACKAGES)

# Two test processes (pytest-xdist): most tests wait on one core (a TensorFlow import, a
# subprocess), so on CI's 2 cores the suite takes about half the time. TEST_JOBS=0 runs it in one.
TEST_JOBS ?= 2

# ruff (pyproject.toml's [tool.ruff]) first: a lint error fails the build like a test, in seconds
test: install test-system
	$(BIN)/ruff check cnnlab tests bench scripts examples
	$(BIN)/python -m pytest -q $(if $(filter-out 0,$(TEST_JOBS)),-n $(TEST_JOBS) --dist worksteal)

# make bench: the speed benchmark of issue 6 into bench/RESULTS.md (~15-20 min on 2 cores;
# run it on an otherwise idle machine). BENCH_ARGS=--quick checks the harness in minutes.
# WITH_TORCH=1 adds the PyTorch reference, installed into its own venv (never a cnnlab dependency).
TORCH_VENV := bench/.torchvenv
TORCH_PACKAGES ?= torch==2.13.0 numpy==2.4.6
BENCH_ARGS ?=

$(TORCH_VENV)/.installed:
	$(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/pip install --quiet $(TORCH_PACKAGES)
	touch $@

bench: install $(if $(WITH_TORCH),$(TORCH_VENV)/.installed)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
