# Thin aliases over the `bertpress` CLI. The artifact cache, not file timestamps, decides what
# reruns. Only venv set-up lives here.
#   make run                         whole pipeline on configs/default.yaml, then a results table
#   make distill SET="distill.temperature=4"   one stage (+ anything upstream that is stale)
#   make test                        lint + tests on tiny models (what CI runs)
#   make setup GPU=1                 onnxruntime-gpu instead of onnxruntime (never both)

PYTHON ?= python3.11
VENV ?= .venv
CONFIG ?= configs/default.yaml
SET ?=
GPU ?= 0
PORT ?= 5000

ORT := $(if $(filter 1,$(GPU)),gpu,cpu)
ORT_OTHER := $(if $(filter 1,$(GPU)),onnxruntime,onnxruntime-gpu)
STAMP := $(VENV)/.installed-$(ORT)
BP := $(VENV)/bin/bertpress
ARGS := --config $(CONFIG) $(foreach s,$(SET),--set $(s))
STAGES := data finetune distill baseline export quantize benchmark

.PHONY: setup run all $(STAGES) status validate test test-slow lint ui clean lock

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	-$(VENV)/bin/python -m pip uninstall -y -q $(ORT_OTHER) 2>/dev/null
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e ".[$(ORT),dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@
	@echo "venv ready: $(VENV) (onnxruntime: $(ORT))"

run all: setup
	$(BP) run all $(ARGS)

$(STAGES): setup
	$(BP) run $@ $(ARGS)

status: setup
	$(BP) status $(ARGS)

validate: setup
	$(BP) validate $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(VENV)/bin/python -m pytest -m "not slow" -q

test-slow: setup
	$(VENV)/bin/python -m pytest -m slow -q

ui: setup
	$(BP) ui $(ARGS) --port $(PORT)

# Regenerate the pinned set from the current venv (after changing dependencies in pyproject.toml).
lock: setup
	$(VENV)/bin/python -m pip freeze --exclude-editable | grep -v -E '^(onnxruntime-gpu)=' \
	  | sed 's/^torch==\(.*\)+cpu/torch==\1/' > constraints.txt

clean:
	rm -rf artifacts
