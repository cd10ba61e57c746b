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

.PHONY: install train test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[cpu,test]'
	touch $@

train: install
	$(BIN)/cnnlab train $(CONFIG)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
