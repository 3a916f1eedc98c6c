# The two commands of the README: `make run` (default pipeline) and `make test`.
# Each creates (or reuses) its own virtual environment in .venv.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: venv run test lint bench gpu-check clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# CPU build of torch (on disk on these machines); GPU users: see docs/gpu.md.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: venv
	$(BIN)/snakemake --cores $(CORES)

test: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/snakefmt --check Snakefile workflow/
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/snakefmt --check Snakefile workflow/
	$(BIN)/snakemake --lint

bench: venv
	$(BIN)/python bench/bench_agatston.py
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_localize.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_train.py --side-by-side
	$(BIN)/python bench/bench_evaluate.py
	$(BIN)/python bench/bench_oracle.py
	$(BIN)/python bench/bench_infer.py

# On a CUDA machine: the tests marked gpu, then the GPU benchmarks; JSON on stdout and in
# results/gpu_check.json, within 8 minutes (docs/gpu.md). The venv needs the CUDA build of
# torch (docs/gpu.md, GPU users). Without a GPU: one line saying nothing was run, exit code 0.
gpu-check: venv
	$(BIN)/python bench/gpu_check.py

clean:
	rm -rf results resources .snakemake
