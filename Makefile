# nmfseg: the two commands a new user needs are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Pinned together: nnU-Net's trainer lookup imports torchvision, and PyPI's torchvision wheels
# only import beside the torch build they were made for (2.13.0's CPU wheel has none).
TORCH ?= 2.14.1
TORCHVISION ?= 0.29.1

.PHONY: venv demo test lint bench bench-scaling clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==$(TORCH) torchvision==$(TORCHVISION)
	$(BIN)/pip install -q -e '.[dev,export,openvino,nnunet,bundle]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/nmfseg demo --out demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_nmf.py
	$(BIN)/python benchmarks/bench_models.py
	$(BIN)/python benchmarks/bench_export.py
	$(BIN)/python benchmarks/bench_cpu_paths.py
	$(BIN)/python benchmarks/bench_engines.py
	$(BIN)/python benchmarks/profile_engines.py

# The long scaling studies (layer vs tokens, networks vs input size, whole-volume prediction):
# tables, CSVs and figures in $(BENCH_OUT); an interrupted run resumes there.
BENCH_OUT ?= bench_out
bench-scaling: $(STAMP)
	$(BIN)/python benchmarks/bench_scaling.py --out $(BENCH_OUT) --plot
	$(BIN)/python benchmarks/bench_sizes.py --out $(BENCH_OUT) --plot
	$(BIN)/python benchmarks/bench_predict.py --out $(BENCH_OUT)
	$(BIN)/python benchmarks/bench_case.py --out $(BENCH_OUT)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
