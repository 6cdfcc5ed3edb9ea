# One command each: `make test` runs the test suite, `make demo` the demo; each does its
# own set-up (venv, PostgreSQL + q3c, private cluster) idempotently. See doc/setup.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Re-install only when the package metadata changed.
STAMP := $(VENV)/.specprod-db-installed
# Two pytest-xdist workers (one per core): 743 tests in 8 min instead of 12 serially (the
# fixtures are per worker: a schema per test, the private cluster shared under a lock).
PYTEST_ARGS ?= -n 2

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1

.PHONY: env pg db test typecheck docs demo clean-db

# The package is byte-compiled at each `make env` (a second of work): with
# PYTHONDONTWRITEBYTECODE set, as on the test machine, an editable install is otherwise
# compiled again by every process, 0.15-0.2 s of each rank's start-up.
env: $(STAMP)
	$(VPY) -m compileall -q -j 0 py

$(STAMP): setup.cfg pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --progress-bar off -e '.[test,doc,mpich]'
	touch $@

pg:
	bash etc/ensure-pg.sh

# Starts the private cluster unless SPECPROD_DB_DSN or PGHOST/PGPORT/PGDATABASE/PGSERVICE
# names a server; prints the conninfo in use.
db: env pg
	$(VPY) -m specprod_db.devdb.pgcluster ensure

test: db docs typecheck
	bash etc/ensure-chromium.sh
	$(VPY) -m pytest $(PYTEST_ARGS)

# mypy (setup.cfg [mypy]) on the modules whose annotations are complete; a module joins
# MYPY_PATHS when it passes (and its setup.cfg section says disallow_untyped_defs).
MYPY_PATHS := py/specprod_db/db py/specprod_db/stage.py py/specprod_db/schema.py \
	py/specprod_db/errors.py py/specprod_db/load py/specprod_db/mpi.py
typecheck: env
	$(VENV)/bin/mypy $(MYPY_PATHS)

# The Sphinx documentation, warnings as errors (doc/index.rst; open doc/_build/html/index.html).
docs: env
	$(VENV)/bin/sphinx-build -W --keep-going -n -q -b html doc doc/_build/html

# The benchmarks (not tests; bench/README.md): about 27 minutes on this 2-core machine,
# plus about 8 the first time (mock trees written under the workdir and reused); writes
# bench/results/RESULTS.md, its PNG plots and results.json, and prints the table.
BENCH_ARGS ?=
.PHONY: bench
bench: db
	$(VPY) bench/run.py $(BENCH_ARGS)

# The long run of the differential fuzzer of mornings (bench/README.md): SEEDS seeds of
# 12 random mornings each, about 40 s a seed on this machine; writes bench/results/fuzz.md.
SEEDS ?= 40
FUZZ_ARGS ?=
.PHONY: fuzz
fuzz: db
	nice -n 10 $(VPY) bench/fuzz.py --seeds $(SEEDS) $(FUZZ_ARGS)

demo: db
	$(VENV)/bin/specprod-db demo

clean-db:
	if [ -x $(VPY) ]; then $(VPY) -m specprod_db.devdb.pgcluster stop --remove; \
	else PYTHONPATH=py $(PYTHON) -m specprod_db.devdb.pgcluster stop --remove; fi
