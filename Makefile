# attnflow: `make demo` and `make test` do all set-up on a fresh machine.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
NPROCS  ?= 2
DEMO_OUT ?= demos/output
# Under MPI one thread per rank: the machine has as many cores as ranks.
MPIENV  := OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1
MPIRUN  := timeout 2400 $(VENV)/bin/mpiexec -n $(NPROCS)

.PHONY: venv demo demos test test-serial test-mpi test-docs docs lint format bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@set -e; \
	if [ ! -x $(PY) ]; then \
	  python=$$(tools/find-python); \
	  echo "creating $(VENV) with $$python"; \
	  "$$python" -m venv $(VENV); \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all,docs]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) demos/demo_circle_clustering.py --output $(DEMO_OUT)/circle_clustering

test: test-serial test-mpi test-docs

# The site's browser test runs in test-docs, on the site `make docs` has just built.
test-serial: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --ignore=tests/test_docs_site.py

test-mpi: $(STAMP)
	$(MPIENV) $(MPIRUN) sh -c '$(PY) -m pytest -q -p no:cacheprovider --with-mpi \
	  --basetemp=$${TMPDIR:-/tmp}/attnflow-pytest-$$PMI_RANK'
	# Serial == parallel on an odd rank count too (the MPI-marked tests only).
	$(MPIENV) timeout 600 $(VENV)/bin/mpiexec -n 3 $(PY) -m pytest -q -p no:cacheprovider \
	  --only-mpi tests
	@set -e; out=$$(mktemp -d); for d in demos/demo_*.py; do \
	  echo "mpiexec -n $(NPROCS) $$d --small"; \
	  $(MPIENV) $(MPIRUN) $(PY) $$d --small --output $$out/$$(basename $$d .py); \
	done; rm -rf $$out

# The documentation site: Sphinx + MyST, warnings as errors; the gallery runs every demo with
# --small (outputs kept in docs/_build/gallery and reused while demo and sources are unchanged).
# -E: every page is read again (autodoc and viewcode do not notice changed sources otherwise).
docs: $(STAMP)
	$(VENV)/bin/sphinx-build -E -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

# Opens the fresh build in headless Chromium (Debian's chromium + chromium-driver).
test-docs: docs
	ATTNFLOW_DOCS_HTML=$(CURDIR)/docs/_build/html $(PY) -m pytest -q -p no:cacheprovider \
	  tests/test_docs_site.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests demos benchmarks
	$(VENV)/bin/ruff format --check src tests demos benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format src tests demos benchmarks
	$(VENV)/bin/ruff check --fix src tests demos benchmarks

bench: $(STAMP)
	$(PY) benchmarks/kernel_throughput.py
	$(PY) benchmarks/fem_step.py
	$(PY) benchmarks/low_temperature.py

clean:
	rm -rf $(VENV) demos/output docs/_build docs/api docs/demos
