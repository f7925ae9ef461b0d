# The two commands of README.md: `make book` and `make test`. Both create and use .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROFILE ?= smoke
# notebooks executed at once (each kernel gets its share of the cores); 2 halves the smoke
# book's time on a 2-core machine
JOBS ?= 2

.PHONY: book test run venv clean

venv: $(STAMP)

# pip at -qq: errors only (a machine-wide pip config naming absent package folders would
# otherwise print a warning per package and folder)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@echo "installing cooplib and its dependencies into $(VENV) (a few minutes the first time)"
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -e '.[dev]'
	touch $@

# Execute every notebook of $(PROFILE) with papermill ($(JOBS) at once), then build the HTML book.
book: $(STAMP)
	$(PY) -m cooplib.book all --profile $(PROFILE) --jobs $(JOBS)

# The import layers (pyproject.toml [tool.importlinter]), then unit tests and nbval over
# the notebooks (their stored outputs are the smoke reference).
test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

clean:
	rm -rf _build book/_executed runs
