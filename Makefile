# Set-up and everyday commands. `make demo` and `make test` each install what they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0; a looser pin would pull several GB of CUDA wheels on a CPU-only machine.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup test lint format demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: setup
	$(BIN)/python -m audioloop.demo demo
	$(BIN)/audioloop render demo/song.wav --image demo/hero.png --schedule demo/schedule.yaml \
		--config configs/tiny.yaml -o demo/demo.mp4

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache
