# The two commands users need:  make run  (install + the DCGAN experiment)  and  make test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned here: an unpinned torch pulls the newest CUDA build (gigabytes).
TORCH  ?= torch==2.13.0
RECIPE ?= recipes/dcgan.toml

.PHONY: install run test lint bench clean ui

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,ray]"
	$(BIN)/python -m pip install -q -e examples/gan-pipe-relativistic
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/gan-pipe run $(RECIPE)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check pipeline plugins tests bench examples

# Figures and the hardware they were measured on: docs/performance.md
bench: install
	$(BIN)/python bench/parzen.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/startup.py

ui:
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

clean:
	rm -rf $(VENV) build *.egg-info
