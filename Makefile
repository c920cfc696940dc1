# Thin aliases over the `bertpress` CLI. The artifact cache, not file timestamps, decides what
# reruns. Only venv set-up lives here.
#   make run                         whole pipeline on configs/default.yaml, then a results table
#   make distill SET="distill.temperature=4"   one stage (+ anything upstream that is stale)
#   make test                        lint + tests on tiny models (what CI runs)
#   make setup GPU=1                 onnxruntime-gpu instead of onnxruntime (never both)
#   make finetune NPROC=2            DDP training with 2 processes (torchrun; gloo on CPU, nccl on GPUs)
#   make retrain                     CI: data -> release, then the quality gates (non-zero on a failed gate)
#   make serve BUNDLE=models:/bertpress-default@champion     HTTP on 127.0.0.1:$(SERVE_PORT)
#   make mlflow-server               a real tracking server on 127.0.0.1:$(PORT) (sqlite + local artifacts)

PYTHON ?= python3.11
VENV ?= .venv
CONFIG ?= configs/default.yaml
SET ?=
GPU ?= 0
PORT ?= 5000
SERVE_PORT ?= 8000
BUNDLE ?= models:/bertpress-default@champion
MLFLOW_DIR ?= mlflow-server
RUNTIME_VENV ?= .venv-runtime
NPROC ?= 1
# pytest-xdist processes for `make test` (auto: one per CPU core; 1 runs the tests in one process)
TEST_WORKERS ?= auto

ORT := $(if $(filter 1,$(GPU)),gpu,cpu)
ORT_OTHER := $(if $(filter 1,$(GPU)),onnxruntime,onnxruntime-gpu)
STAMP := $(VENV)/.installed-$(ORT)
BP := $(VENV)/bin/bertpress
ARGS := --config $(CONFIG) $(foreach s,$(SET),--set $(s))
# NPROC=2: one process per rank under torchrun (DDP; rank 0 writes and logs).
LAUNCH := $(if $(filter-out 1,$(NPROC)),$(VENV)/bin/torchrun --standalone --nproc_per_node $(NPROC) -m pipeline.cli,$(BP))
STAGES := data finetune baseline static search distill export quantize benchmark release

.PHONY: setup run all $(STAGES) promote retrain serve mlflow-server runtime-venv status validate test test-slow lint ui clean lock

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	-$(VENV)/bin/python -m pip uninstall -y -q $(ORT_OTHER) 2>/dev/null
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e ".[train,serve,$(ORT),dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@
	@echo "venv ready: $(VENV) (onnxruntime: $(ORT))"

run all: setup
	$(BP) run all $(ARGS)

$(STAGES): setup
	$(LAUNCH) run $@ $(ARGS)

promote: setup
	$(BP) promote $(ARGS)

retrain: setup
	$(BP) retrain $(ARGS)

serve: setup
	$(BP) serve $(BUNDLE) --port $(SERVE_PORT)

# Point the pipeline at it with: export MLFLOW_TRACKING_URI=http://127.0.0.1:$(PORT)
mlflow-server: setup
	@mkdir -p $(MLFLOW_DIR)
	$(VENV)/bin/mlflow server --backend-store-uri sqlite:///$(abspath $(MLFLOW_DIR))/mlflow.db \
	  --artifacts-destination $(abspath $(MLFLOW_DIR))/artifacts --host 127.0.0.1 --port $(PORT)

# The production install: onnxruntime + tokenizers + numpy (+ fastapi/uvicorn, MLflow client, FAISS), no torch.
runtime-venv:
	@test -x $(RUNTIME_VENV)/bin/python || $(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install -q -c constraints.txt ".[cpu,serve,registry,index]"
	@! $(RUNTIME_VENV)/bin/python -c "import torch" 2>/dev/null || (echo "torch leaked into $(RUNTIME_VENV)"; exit 1)
	@du -sh $(RUNTIME_VENV)

status: setup
	$(BP) status $(ARGS)

validate: setup
	$(BP) validate $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(VENV)/bin/python -m pytest -m "not slow" -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

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
