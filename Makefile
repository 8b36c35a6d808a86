# asrhybrid recipes, Kaldi style:
#   make setup                        create .venv (pinned deps, kaldifeat, KenLM tools)
#   make test                         the test suite (CPU)
#   make [stage=N] [stop_stage=M] [corpus=NAME] [corpus_dir=PATH] [workdir=PATH] [force=1]
#                                     run stages N..M of recipes/NAME (default: synth, all stages)
corpus     ?= synth
stage      ?= 0
stop_stage ?= 100
workdir    ?= work/$(corpus)
corpus_dir ?=
force      ?= 0
VENV       ?= .venv
PYTEST_ARGS ?=

ASRHYBRID := $(VENV)/bin/asrhybrid

.PHONY: recipe setup test test-all bench help
recipe:
	$(ASRHYBRID) run-recipe recipes/$(corpus) --stage $(stage) --stop-stage $(stop_stage) \
	  --workdir $(workdir) $(if $(corpus_dir),--corpus-dir $(corpus_dir)) $(if $(filter 1 yes true,$(force)),--force)

setup:
	bash local/setup.sh

test:
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all:
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench:
	$(VENV)/bin/python bench/fbank.py
	$(VENV)/bin/python bench/graph.py
	$(VENV)/bin/python bench/align.py
	$(VENV)/bin/python bench/scale.py

help:
	@sed -n '1,6p' Makefile
