# The README's two commands: `make demo` (main job on the embedded synthetic data) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test
install:
	VENV=$(VENV) bash tools/setup_env.sh

demo: install
	$(PY) tools/demo.py

test: install
	$(PY) -m pytest tests -q -ra
