# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install tools clean bench

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch==2.13.0 first: the CPU wheel on disk. A bare `torch` requirement would pull a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/medm2g demo

# Programs some tests run (they skip without them), as `binary:Debian-package`: the DICOM validator,
# headless Chromium for the HTML report, Java for METEOR. `make tools` installs the missing ones from
# the distribution's packages when it can (root with apt-get, as in CI) and fails if that fails, so CI
# never passes by skipping; elsewhere it says what is missing. `make test TOOLS=` skips the check.
TOOLS ?= dciodvfy:dicom3tools chromium:chromium java:default-jre-headless

tools:
	@missing=""; for pair in $(TOOLS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make tools: installing$$missing (Debian packages some tests need)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends$$missing; \
	else \
	  echo "make tools: missing$$missing; not root with apt-get, so the tests that need them will skip" >&2; \
	  echo "make tools: install them with: sudo apt-get install --no-install-recommends$$missing" >&2; \
	fi

test: $(STAMP) tools
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
