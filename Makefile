SUITE ?= quick
JOBS ?= 1
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install bench run report test lint publish clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch>=2.3" "torchvision>=0.18"
	$(PY) -m pip install --quiet -e ".[dev,onnx]"
	touch $(STAMP)

bench: install
	status=0; $(PY) -m bench.cli run $(SUITE) --jobs $(JOBS) || status=$$?; \
	$(PY) -m bench.cli report $(SUITE) && exit $$status

run: install
	$(PY) -m bench.cli run $(SUITE) --jobs $(JOBS)

report: install
	$(PY) -m bench.cli report $(SUITE)

publish: install
	$(PY) -m bench.cli publish --readme README.md

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check bench methods tests benchmarks

clean:  # checkpoints, logs, locks and other suites; the committed reference records stay
	git clean -fdXq results 2>/dev/null || rm -rf results
