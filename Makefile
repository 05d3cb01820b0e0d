# Two commands for a newcomer: `make train` and `make test`. Each sets up ./.venv on its own first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp is newer than pyproject.toml once the editable install of the current dependency list succeeded,
# so a second `make install` with nothing changed costs seconds.
STAMP := $(VENV)/.oaml-installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install train test lint format clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: install
	$(BIN)/python -m oaml.train $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-venv:
	rm -rf $(VENV)
