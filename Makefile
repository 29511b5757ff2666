# The README's two commands: `make demo` (main job on the embedded synthetic data) and `make test` (style check
# with flake8 and type check with mypy, settings in setup.cfg, then the test suite).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo lint test
install:
	VENV=$(VENV) bash tools/setup_env.sh

demo: install
	$(PY) tools/demo.py

lint: install
	$(PY) -m flake8 mmsparse mmsparse_ort tools tests configs setup.py
	$(PY) -m mypy mmsparse mmsparse_ort

test: install lint
	$(PY) -m pytest tests -q -ra
