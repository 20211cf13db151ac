# kdrun: `make install`, then `make demo`. `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
KDRUN := $(VENV)/bin/kdrun
PYTEST := $(PY) -m pytest

.PHONY: install test test-fast demo sweep-demo clean

install:
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@$(KDRUN) --help >/dev/null && echo "kdrun installed in $(VENV); try: make demo"

# Every test, the slow end-to-end ones included (what CI runs).
test:
	$(PYTEST) --timeout 600

# The fast ones only, for the edit-test loop.
test-fast:
	$(PYTEST) -m "not slow" --timeout 300

# Offline quick start on scikit-learn's digits: teacher, student from scratch
# and distilled student over 5 seeds, then a comparison table.
demo:
	$(KDRUN) -m experiment=quickstart strategy=scratch,kd seed=0,1,2,3,4

sweep-demo:
	$(KDRUN) -m experiment=quickstart T=1,2,4,8,16

clean:
	rm -rf outputs multirun .pytest_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
