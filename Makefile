# gmmkit: the README's two commands are `make demo` and `make test`; both set everything up first.
VENV  ?= .venv
BIN   := $(VENV)/bin
READY := $(VENV)/.gmmkit-ready
# The current lane (README "Two lanes"): TensorFlow 2.21 with tf-keras and mpi4py, no Horovod, in a venv of its own
CURRENT_VENV  ?= .venv-current
CURRENT_READY := $(CURRENT_VENV)/.gmmkit-ready

.PHONY: setup setup-current demo test test-current lint lab tensorboard bench screenshots clean
setup: $(READY)

$(READY): pyproject.toml scripts/setup-env.sh
	VENV=$(VENV) bash scripts/setup-env.sh

setup-current: $(CURRENT_READY)

$(CURRENT_READY): pyproject.toml scripts/setup-env.sh
	GMMKIT_LANE=current VENV=$(CURRENT_VENV) bash scripts/setup-env.sh

demo: $(READY)
	$(BIN)/gmmkit demo --out runs/demo --overwrite

# The format and the lint first (ruff, pyproject.toml), then the suite on two pytest-xdist workers
# (TEST_WORKERS=0: one process); a file's tests run together (tests/conftest.py). Then the current lane's part
# of the suite (the tests marked `lane`) in its venv, set up first (CURRENT_LANE=0 leaves the lane out).
TEST_WORKERS ?= 2
CURRENT_LANE ?= 1
test: $(READY) lint $(if $(filter 1,$(CURRENT_LANE)),$(CURRENT_READY))
	PYTHONUTF8=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=20 $(PYTEST_ARGS)
	$(if $(filter 1,$(CURRENT_LANE)),$(MAKE) --no-print-directory test-current)

# tests/test_lanes.py reaches the Horovod lane through its venv's Python
test-current: $(READY) $(CURRENT_READY)
	PYTHONUTF8=1 GMMKIT_HOROVOD_PYTHON=$(abspath $(BIN))/python $(CURRENT_VENV)/bin/python -m pytest -m lane \
		-n $(TEST_WORKERS) --durations=10 $(PYTEST_ARGS)

lint: $(READY)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# The README's screenshots: the browser test, copying its final screenshots into docs/screenshots/.
screenshots: $(READY)
	GMMKIT_SCREENSHOTS=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest tests/test_browser.py

lab: $(READY)
	$(BIN)/jupyter lab notebooks $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# TensorBoard over every run under runs/ (RUNS=DIR for another folder): losses, learning rate, samples/s,
# times and each run's settings in the HParams tab. On this machine only, like JupyterLab.
RUNS    ?= runs
TB_PORT ?= 6006
tensorboard: $(READY)
	$(BIN)/tensorboard --logdir $(RUNS) --host 127.0.0.1 --port $(TB_PORT)

# The growth curves as HTML, and as a PNG for RESULTS.md when Debian's chromium is there to render it.
bench: $(READY)
	$(BIN)/gmmkit bench --json benchmarks/results.json --plot benchmarks/growth.html
	$(BIN)/python benchmarks/notebook_latency.py --json benchmarks/notebook-latency.json
	command -v chromium >/dev/null && chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
		--window-size=1120,780 --virtual-time-budget=10000 --screenshot=benchmarks/growth.png \
		file://$(CURDIR)/benchmarks/growth.html || true

clean:
	rm -rf runs .pytest_cache
