# postillon: build, checks, tests, benchmarks. Needs only python3 and make.
#   make venv    create .venv and install the package with its dev extra (re-run when
#                pyproject.toml changes)
#   make check   ruff (lint + format check) and mypy --strict
#   make test    check, then pytest; extra arguments via PYTEST_ARGS="-k tls -x"
#   make cov     pytest with branch coverage of postillon
#   make bench   run every bench/bench_*.py
#   make demo    run `postillon demo`
#   make clean   remove the venv, caches and build output

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
LINT_PATHS := $(wildcard src tests bench)

.PHONY: venv check test cov bench demo clean

venv: $(STAMP)

# The stamp is newer than pyproject.toml once the install succeeded; a failed install
# leaves no stamp, so the next run tries again.
$(STAMP): pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

check: venv
	$(VPY) -m ruff check $(LINT_PATHS)
	$(VPY) -m ruff format --check $(LINT_PATHS)
	$(VPY) -m mypy

# pytest exits 5 when it collected no test: say so loudly and fail.
define run_pytest
	@rc=0; $(VPY) -m pytest $(1) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc
endef

test: check
	$(call run_pytest,)

cov: venv
	$(call run_pytest,--cov=postillon --cov-branch --cov-report=term-missing)

bench: venv
	@set -e; found=0; \
	for f in bench/bench_*.py; do \
		[ -e "$$f" ] || continue; found=1; \
		echo "== $$f"; $(VPY) "$$f"; \
	done; \
	if [ $$found -eq 0 ]; then echo "no benchmarks in bench/"; fi

demo: venv
	$(VENV)/bin/postillon demo

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis \
		.coverage htmlcov demo-mail
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
