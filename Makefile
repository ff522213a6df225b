# Every target creates .venv itself when it is missing (or pyproject.toml changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all

.PHONY: reproduce ablations test lint test-slow test-cluster dry-run clean-results help docs

help:
	@echo "make reproduce   set up .venv, then run the default reproduction (config/config.yaml)"
	@echo "make ablations   set up .venv, then run the FIPA ablations (config/ablations.yaml) into results/ablations/"
	@echo "make test        set up .venv, then run the test suite and ruff"
	@echo "make lint        ruff on the package, tests, benchmarks and examples"
	@echo "make test-slow   also run the slow paper-scale tests"
	@echo "make test-cluster  run the workflow on a throw-away single-node SLURM (root; about 7 min)"
	@echo "make dry-run     list the jobs the default reproduction would run"
	@echo "make docs        regenerate config/README.md's key tables from the Params fields (fipa/keys.py)"
	@echo "make resume      after an interruption: unlock (only if no other Snakemake runs here), rerun incomplete jobs"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

reproduce: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml $(SNAKEFLAGS)

# Its own Snakemake run: the rules write relative results/... paths, so --directory gives the
# ablations a separate tree, results/ablations/results/ (summary, figures/knob_*.png, report.html),
# and its own .snakemake/ state; the configfile must then be an absolute path.
ablations: $(STAMP)
	mkdir -p results/ablations
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores $(CORES) --snakefile $(CURDIR)/workflow/Snakefile \
		--configfile $(CURDIR)/config/ablations.yaml --directory results/ablations $(SNAKEFLAGS)

# after a kill: the lock and the half-written outputs of the killed jobs stay behind. Unlock only
# when no other Snakemake works in this directory (fipa/guard.py), then rerun what is incomplete;
# every training job resumes from its last checkpoint.
resume: $(STAMP)
	$(BIN)/python -m fipa.guard .
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --unlock --configfile config/config.yaml $(SNAKEFLAGS)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml \
		--rerun-incomplete $(SNAKEFLAGS)

dry-run: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake -n --quiet rules --configfile config/config.yaml $(SNAKEFLAGS)

test: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q
	$(BIN)/ruff check .

lint: $(STAMP)
	$(BIN)/ruff check fipa tests benchmarks examples

# the key tables between <!-- keys: ... --> markers come from the fields' key(...) docs and bounds
docs: $(STAMP)
	$(BIN)/python -m fipa.keys config/README.md

test-slow: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q --runslow

test-cluster: $(STAMP)
	FIPA_BIN=$(CURDIR)/$(BIN) bash tests/cluster/run_slurm_test.sh

clean-results:
	find results -mindepth 1 ! -name README.md -exec rm -rf {} +
