# Quickstart: `make demo` runs the study on Fashion-MNIST; `make test` runs the test suite.
PYTHON ?= python
# The torch build to install when none is importable (override for other platforms).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
STAMP := .make

.PHONY: install data demo test test-fast lint bench clean

install: $(STAMP)/installed

$(STAMP)/installed: pyproject.toml
	@mkdir -p $(STAMP)
	@$(PYTHON) -c "import torch, torchvision" 2>/dev/null || $(PYTHON) -m pip install $(TORCH_SPEC)
	$(PYTHON) -m pip install -q -e '.[dev]'
	@touch $@

# Fashion-MNIST from the Debian package where we can install it; otherwise torchvision downloads
# it on the first run (needs internet).
data:
	@if [ -d $(FASHION_MNIST_DIR) ]; then echo "Fashion-MNIST: $(FASHION_MNIST_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST not installed system-wide; train.py will download it (download=true)"; fi

demo: install data
	$(PYTHON) train.py

test: install data
	$(PYTHON) -m pytest -q

test-fast: install data
	$(PYTHON) -m pytest -q -m "not slow"

lint: install
	ruff check . && ruff format --check .

bench: install data
	$(PYTHON) bench/run_all.py

clean:
	rm -rf $(STAMP) outputs multirun
