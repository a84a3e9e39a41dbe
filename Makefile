# `make test` and `make demo` each do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo lint bench clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the package metadata changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The browser tests open the HTML report in headless Chromium through Selenium and
# Debian's chromedriver: install Debian's chromium and chromium-driver when either is
# missing (as root or with password-less sudo), else say so. The tests skip without
# them, except under CI=true, where they fail.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo=sudo; \
	  else echo "note: chromium or chromedriver is missing and installing them needs root:" \
	    "apt-get install chromium chromium-driver (the browser tests skip, or fail under CI)"; \
	    exit 0; fi; \
	  if ! command -v apt-get >/dev/null 2>&1; then echo "note: no apt-get here; install" \
	    "chromium and chromedriver by hand for the browser tests"; exit 0; fi; \
	  echo "installing chromium and chromium-driver for the browser tests (apt-get)"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$sudo apt-get install -y -qq chromium chromium-driver >/dev/null \
	  || echo "note: installing chromium failed; the browser tests skip, or fail under CI"; }

test: $(STAMP) browser
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/rnnscope demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
