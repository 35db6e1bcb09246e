# Conveyor: two commands on a fresh machine.
#   make run   - set everything up and start the whole system
#   make test  - set everything up and run every test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench bench-quick venv migrate clean stop

$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/python manage.py up

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Benchmarks (not part of `make test`): tables on stdout, figures in bench/results/latest.json.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python -m cicd.embedded up
	$(BIN)/python -m bench $(BENCH_ARGS)

# The same benchmarks at about a tenth of the sizes: under 3 minutes.
bench-quick: $(STAMP)
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python -m cicd.embedded up
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

stop: $(STAMP)
	$(BIN)/python -m cicd.embedded down

clean:
	rm -rf $(VENV) var
