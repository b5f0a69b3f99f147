# rpathfix: two commands matter, `make demo` and `make test`. Both set themselves up.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck stubs clean system-deps bazel-example

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	$(VPY) -m compileall -q src  # PYTHONDONTWRITEBYTECODE=1 machines would recompile rpathfix at every start
	touch $(STAMP)

# Debian packages the tests use: Bazel (bazel-bootstrap works offline) for the rules/ tests,
# elfutils for eu-elflint (the patch tests' second opinion). Installed only when missing and
# when we may: CI and fresh machines run as root.
SYSTEM_TOOLS := bazel:bazel-bootstrap eu-elflint:elfutils
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing$$missing (apt)"; \
	  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

stubs: setup
	$(VPY) testdata/cuda_stubs/build.py --out testdata/cuda_stubs/out

# The Bazel example (examples/bazel, docs/bazel.md): the stub wheels, then `bazel run //:app`.
# RPATHFIX_PYTHON is the interpreter that runs `rpathfix unpack` when Bazel fetches a wheel.
bazel-example: stubs
	cd examples/bazel && RPATHFIX_PYTHON=$(CURDIR)/$(VPY) bazel run //:app

demo: setup
	bash examples/demo.sh

test: setup
	$(VPY) -m ruff check src tests testdata benchmarks
	$(VPY) -m mypy
	$(VPY) -m pytest -q

clean:
	rm -rf $(VENV) testdata/cuda_stubs/out demo-out
