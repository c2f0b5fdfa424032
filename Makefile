# Every target bootstraps .venv (python3 -m venv + pip install -e .[test]) when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/pnp-stable demo --out demo_out

bench: $(STAMP)
	for script in operators lipschitz_vs_depth denoiser_speed solver_overhead; do \
		$(BIN)/python benchmarks/$$script.py || exit 1; \
	done

clean:
	rm -rf $(VENV) build *.egg-info
