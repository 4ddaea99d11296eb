# Dupire Desk. `make run` starts the app on the demo market; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PORT   ?= 8501

.PHONY: run test test-fast bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt | $(PY)
	$(PY) -m pip install -q -r requirements.txt
	@# compile the implied-vol kernels once (numba caches them), so the app's first page is fast
	$(PY) -c "import core.black as b; print('implied-vol backend:', b.backend())"
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

run: $(VENV)/.runtime
	$(PY) -m streamlit run app.py --server.port $(PORT)

test: $(VENV)/.dev
	$(PY) -m pytest

test-fast: $(VENV)/.dev
	$(PY) -m pytest -m "not slow and not e2e"

bench: $(VENV)/.dev
	$(PY) -m bench

lint: $(VENV)/.dev
	$(PY) -m ruff check core ui pages app.py tests bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
