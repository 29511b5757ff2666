# The README's two commands: `make demo` (main job on the embedded synthetic data) and `make test` (style check
# with flake8 and type check with mypy, settings in setup.cfg, then the test suite); `make demo-real` runs the demo
# on the real images of docs/real_images.md.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo demo-real lint test
install:
	VENV=$(VENV) bash tools/setup_env.sh

demo: install
	$(PY) tools/demo.py

demo-real: install
	$(PY) tools/demo.py --data real

lint: install
	$(PY) -m flake8 mmsparse mmsparse_ort tools tests configs setup.py
	$(PY) -m mypy mmsparse mmsparse_ort

test: install lint
	$(PY) -m pytest tests -q -ra
