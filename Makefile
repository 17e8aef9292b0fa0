# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean-demo

# setuptools prints an "Editable installation" note on every editable install, and pip >= 26 shows a build
# backend's notes as warnings; the note says nothing about this project, so that one alone is filtered.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# Three continuous-training sessions of the guide on examples/, offline (scratch base), then a generated answer.
demo: $(STAMP)
	bash examples/demo.sh $(PY)

test: $(STAMP)
	$(PY) -m pytest -q
