# gmmkit: the README's two commands are `make demo` and `make test`; both set everything up first.
VENV  ?= .venv
BIN   := $(VENV)/bin
READY := $(VENV)/.gmmkit-ready

.PHONY: setup demo test lab bench clean
setup: $(READY)

$(READY): pyproject.toml scripts/setup-env.sh
	VENV=$(VENV) bash scripts/setup-env.sh

demo: $(READY)
	$(BIN)/gmmkit demo --out runs/demo

test: $(READY)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lab: $(READY)
	$(BIN)/jupyter lab notebooks $$([ "$$(id -u)" = 0 ] && echo --allow-root)

bench: $(READY)
	$(BIN)/gmmkit bench --json benchmarks/results.json

clean:
	rm -rf runs .pytest_cache
