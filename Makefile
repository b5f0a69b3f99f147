# rpathfix: two commands matter, `make demo` and `make test`. Both set themselves up.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck stubs clean system-deps

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	$(VPY) -m compileall -q src  # PYTHONDONTWRITEBYTECODE=1 machines would recompile rpathfix at every start
	touch $(STAMP)

# Bazel (bazel-bootstrap works offline) for the rules/ tests. Installed only when missing
# and when we may: CI and fresh machines run as root.
system-deps:
	@if ! command -v bazel >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing bazel-bootstrap (apt)"; \
	  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bazel-bootstrap >/dev/null; \
	fi

stubs: setup
	$(VPY) testdata/cuda_stubs/build.py --out testdata/cuda_stubs/out

demo: setup
	bash examples/demo.sh

test: setup
	$(VPY) -m ruff check src tests testdata benchmarks
	$(VPY) -m mypy
	$(VPY) -m pytest -q

clean:
	rm -rf $(VENV) testdata/cuda_stubs/out demo-out
