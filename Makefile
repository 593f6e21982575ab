# Newcomers: `make run` (main job) and `make test`. The venv lives in .venv.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python

.PHONY: venv test run clean

venv: $(VENV)/.installed

# Reinstalls only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install -e '.[test]'
	touch $@

test: venv
	$(VPY) -m pytest -n 2 tests

run: venv
	$(VPY) -m prompt_jax.score --demo

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
