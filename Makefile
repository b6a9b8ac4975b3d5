# Two commands do everything on a fresh machine with Python 3.11: `make demo` and `make test`.
# Each creates .venv from requirements.txt (and installs this package, editable) when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps -e .
	touch $@

.PHONY: install demo test bench
install: $(VENV)/.installed

demo: $(VENV)/.installed  ## train, fine-tune with AdvAmd and validate on the embedded digits-det dataset
	$(BIN)/python train_advamd.py

test: $(VENV)/.installed  ## lint and format checks, then the test suite (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed  ## speed and memory ratios against stock Ultralytics
	$(BIN)/python benchmarks/attack_speed.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/inference.py
