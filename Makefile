# The user's day: setup -> data -> train-all-stages -> needle / videomme -> leaderboards.
# Everything built goes under $(ART) (git-ignored); results that back the leaderboards go to leaderboards/results/.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
LV := $(VENV)/bin/longvila
ART ?= artifacts
FRAMES ?= 6000
NPROC ?= 2
TORCHRUN := $(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC)
# DeepSpeed compiles its CPU ops once; keep them across clones and CI runs on this machine.
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/longvila/torch_extensions
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED ?= 1

STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)

.PHONY: all setup browser-setup lmms-eval data train-all-stages needle videomme leaderboards bench bench-sp bench-packed bench-data bench-batches gpu-check test test-fast lint tokenizer clean

all: setup data train-all-stages needle videomme leaderboards
	@echo "leaderboard: leaderboards/README.md and leaderboards/index.html"

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# The matching torch/torchvision pair first (pip takes both from local disk), then the project under
	# the same constraints so that nothing pulls another torch.
	$(PY) -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c constraints.txt -e ".[openclip,lmms,dev]"
	rm -f $(VENV)/.installed-* && touch $@

# Debian's chromium + websocket-client for the leaderboard page's real-browser check (CI runs it).
browser-setup: setup
	leaderboards/setup_browser.sh $(VENV)

data: setup
	$(LV) data build --out $(ART)/data

tokenizer: setup
	$(LV) model build-tokenizer

train-all-stages: setup
	$(LV) train all --data $(ART)/data --out $(ART)/ckpt --nproc $(NPROC)

# printed needle cards (the retrieval test), then cards handwritten by held-out writers (reading as well)
needle: setup
	$(LV) eval needle --ckpt $(ART)/ckpt/stage5 --frames $(FRAMES) --nproc $(NPROC) --publish --out $(ART)/eval/needle
	$(LV) eval needle --ckpt $(ART)/ckpt/stage5 --frames $(FRAMES) --nproc $(NPROC) --style hand --publish --out $(ART)/eval/needle-hand

videomme: setup
	$(LV) eval videomme --ckpt $(ART)/ckpt/stage5 --publish --out $(ART)/eval/videomme

# lmms-eval on the embedded VideoMME-format tasks (after `make videomme`, which writes the benchmark):
# letters (generation), then option likelihood (multiple_choice, which needs lmms-eval's simple model path)
# (`longvila eval lmms` fails when a task wrote no metrics: lmms-eval itself exits 0 when a model fails to load)
lmms-eval: setup
	LONGVILA_VIDEOMME_ROOT=$(ART)/eval/videomme/bench $(LV) eval lmms --model longvila_e2e --model-args pretrained=$(ART)/ckpt/stage5,num_frames=64 --tasks longvila_videomme --out $(ART)/eval/lmms
	LONGVILA_VIDEOMME_ROOT=$(ART)/eval/videomme/bench $(LV) eval lmms --model longvila_e2e --model-args pretrained=$(ART)/ckpt/stage5,num_frames=64 --tasks longvila_videomme_ll --force-simple --out $(ART)/eval/lmms

leaderboards: setup
	$(LV) leaderboards build

bench: bench-sp bench-packed bench-data bench-batches

bench-sp: setup
	$(LV) parallel bench --out $(ART)/bench/sp --publish

# packed training rows on one rank: masked SDPA vs per-sample attention (printed table)
bench-packed: setup
	$(LV) parallel bench-packed --tokens 1024,4096

bench-data: setup
	$(LV) data bench --out $(ART)/bench/data --publish

# the data side of an SP step: every rank building every micro-batch vs the group sharing them (after make data)
bench-batches: setup
	$(PY) -m longvila.pipelines.bench_batches --data $(ART)/data --out $(ART)/bench/batches.json

# the checks that need a GPU (at most 10 minutes on one): exits at once, status 2, without a CUDA device
gpu-check: setup
	$(PY) -m longvila.parallel.gpu_check --out $(ART)/gpu-check --artifacts $(ART) --publish

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not dist and not browser"

lint: setup
	$(VENV)/bin/ruff check longvila data model parallel pipelines eval leaderboards tests

clean:
	rm -rf $(ART) .pytest_cache
