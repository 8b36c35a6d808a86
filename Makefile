# asrhybrid recipes, Kaldi style:
#   make setup                        create .venv (pinned deps, kaldifeat, KenLM tools)
#   make test                         the test suite (CPU)
#   make [stage=N] [stop_stage=M] [corpus=NAME] [corpus_dir=PATH] [workdir=PATH] [force=1] [fold=NAME]
#        [engine=local|dask|slurm] [nj=N] [address=tcp://HOST:8786] [workers=N]
#                                     run stages N..M of recipes/NAME (default: synth, all stages); the
#                                     parallel stages' jobs on ENGINE (default: the recipe's jobs:, else local)
corpus     ?= synth
stage      ?= 0
stop_stage ?= 100
workdir    ?= work/$(corpus)
corpus_dir ?=
force      ?= 0
fold       ?=
engine     ?=
nj         ?=
address    ?=
workers    ?=
VENV       ?= .venv
PYTEST_ARGS ?=

ASRHYBRID := $(VENV)/bin/asrhybrid

.PHONY: recipe setup lint test test-all bench help
recipe:
	$(ASRHYBRID) run-recipe recipes/$(corpus) --stage $(stage) --stop-stage $(stop_stage) \
	  --workdir $(workdir) $(if $(corpus_dir),--corpus-dir $(corpus_dir)) $(if $(filter 1 yes true,$(force)),--force) \
	  $(if $(fold),--fold $(fold)) $(if $(engine),--engine $(engine)) $(if $(nj),--nj $(nj)) \
	  $(if $(address),--address $(address)) $(if $(workers),--workers $(workers))

setup:
	bash local/setup.sh

# the layers of pyproject.toml's import-linter contracts; no unused, undefined or unsorted import; ruff's format
lint:
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check --select F,I asrhybrid tests bench local
	$(VENV)/bin/ruff format --check asrhybrid tests bench local

# pytest-xdist workers, one a core (up to 4), each taking whole test modules (their shared stages stay
# in one process), in collection order: the two yesno recipe modules start first (tests/conftest.py), where
# xdist's default order (most tests first) started the longest module four minutes late
test: lint
	$(VENV)/bin/python -m pytest -m "not slow" -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-all:
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench:
	$(VENV)/bin/python bench/fbank.py
	$(VENV)/bin/python bench/graph.py
	$(VENV)/bin/python bench/align.py
	$(VENV)/bin/python bench/scale.py

help:
	@echo "asrhybrid: Kaldi-style recipes (see README.md)"
	@echo "targets:"
	@echo "  make setup        create $(VENV) with the pinned dependencies (builds kaldifeat, k2, KenLM's tools)"
	@echo "  make lint         the import layers (import-linter) and ruff's import and name checks"
	@echo "  make test         make lint, then the test suite on CPU, without the slow end-to-end checks"
	@echo "  make test-all     every test, the slow ones too"
	@echo "  make bench        the benchmarks (JSON with ratios against the reference implementations)"
	@echo "  make [recipe]     run stages stage..stop_stage of recipes/\$$corpus (the default target)"
	@echo "  make help         this list"
	@echo "variables (current value):"
	@echo "  corpus=$(corpus)       recipe under recipes/: $(notdir $(wildcard recipes/*))"
	@echo "  stage=$(stage) stop_stage=$(stop_stage)   the stages to run"
	@echo "  workdir=$(workdir)   outputs (data/, exp/, RESULTS.md)"
	@echo "  corpus_dir=$(corpus_dir)   where the corpus is (synth: where it is generated)"
	@echo "  force=$(force)       1: redo stages that finished before"
	@echo "  fold=$(fold)        a recipe with folds (fsdd): only this fold (NAME[,NAME]; default every fold)"
	@echo "  engine=$(engine) nj=$(nj) address=$(address) workers=$(workers)   where the parallel stages' jobs run"
	@echo "                   (local, dask, slurm; default: the recipe's jobs:, else local processes)"
	@echo "  VENV=$(VENV)   PYTEST_ARGS=$(PYTEST_ARGS)   the virtualenv; extra pytest arguments"
