# minidpo — `make train` and `make test` are all a newcomer needs; see README.md.
SHELL := /bin/bash
PYTHON     ?= python3
VENV       ?= .venv
# CPU wheel by default; GPU users: make TORCH_SPEC='torch==2.13.0' PIP_ARGS='--index-url ...' or their own build
TORCH_SPEC ?= torch==2.13.0
PIP_ARGS   ?=
NPROC      ?= 1
HOSTFILE   ?=
DS_CONFIG  ?= ds_configs/zero2.json
DATA_DIR   ?= data/demo
PRESET     ?= demo
INIT       ?= runs/demo-init
SFT        ?= runs/sft/export
MODEL      ?= $(SFT)
DATA       ?= $(DATA_DIR)/train.jsonl
OUT        ?= runs/dpo
DPO        ?= $(OUT)/export
# the demo's hyper-parameters only apply to the demo model; your own model starts from the defaults
RUN_CONFIG ?= $(if $(filter $(SFT),$(MODEL)),configs/demo_dpo.yaml)
ARGS       ?=
# the tokenizer folder for a MODEL that carries none (a MiniMind .pth: ../minimind/model)
TOKENIZER  ?=
PORT       ?= 7860

BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False
export TOKENIZERS_PARALLELISM := false
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
# one BLAS thread pool per rank: oversubscribed OpenMP threads spin and slow a CPU run down several-fold
# passive waiting: idle OpenMP threads sleep instead of spinning, so a busy machine does not slow a run ~3x
export OMP_WAIT_POLICY ?= PASSIVE
export OMP_NUM_THREADS ?= $(shell echo $$(( $$(nproc) / $(NPROC) > 0 ? $$(nproc) / $(NPROC) : 1 )))

.PHONY: help venv data sft train eval app tensorboard bench test clean

help:  ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_ARGS) "$(TORCH_SPEC)" -e '.[dev]'
	@touch $@

venv: $(BIN)/.installed  ## create .venv and install minidpo into it

# TRL for the bench (and its test), the trackers for theirs; pinned torch in the same command so pip keeps the CPU wheel
$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/python -m pip install -q $(PIP_ARGS) "$(TORCH_SPEC)" -e '.[dev,bench,trackers]'
	@touch $@

$(DATA_DIR)/train.jsonl: | $(BIN)/.installed
	$(BIN)/python -m minidpo.demo.generate --out $(DATA_DIR)

data: $(DATA_DIR)/train.jsonl  ## generate the bundled bilingual preference data

$(INIT)/config.json: $(DATA_DIR)/train.jsonl
	$(BIN)/python -m minidpo.demo.presets --data $(DATA_DIR) --out $(INIT) --preset $(PRESET)

runs/sft/export/config.json: $(INIT)/config.json
	$(BIN)/deepspeed --num_gpus $(NPROC) trainer/train_sft.py --model $(INIT) --data $(DATA_DIR)/train.jsonl \
		--output_dir runs/sft --deepspeed $(DS_CONFIG) --config configs/demo_sft.yaml

sft: runs/sft/export/config.json  ## train the demo SFT model (tokenizer + tiny Llama, SFT on both answers)

# The demo SFT model is built first when the default model is used and missing.
train: $(BIN)/.installed $(if $(filter $(SFT),$(MODEL)),runs/sft/export/config.json)  ## DPO training (MODEL=, TOKENIZER=, DATA=, OUT=, NPROC=, HOSTFILE=, DS_CONFIG=, ARGS=)
	$(BIN)/deepspeed $(if $(HOSTFILE),--hostfile $(HOSTFILE)) --num_gpus $(NPROC) trainer/train_dpo.py $(if $(RUN_CONFIG),--config $(RUN_CONFIG)) \
		--model $(MODEL) $(if $(TOKENIZER),--tokenizer $(TOKENIZER)) --data $(DATA) --output_dir $(OUT) --deepspeed $(DS_CONFIG) $(ARGS)

# the demo's rule-based judge; JUDGE=none for data without the demo's axes (preference metrics and KL only)
JUDGE      ?= minidpo.demo.judge:judge_heldout

eval: $(BIN)/.installed  ## held-out accuracy, judged behaviour, KL: SFT vs DPO (SFT=, DPO=, TOKENIZER=, OUT=, JUDGE=)
	$(BIN)/python -m minidpo.eval --sft $(SFT) --dpo $(DPO) --data $(DATA_DIR)/heldout.jsonl --output_dir $(OUT) \
		$(if $(TOKENIZER),--tokenizer $(TOKENIZER)) --judge $(JUDGE) $(ARGS)

# iterative on-policy DPO from the `make train` export: sample, judge, train again (README "Iterative DPO")
START      ?= $(DPO)
ITER_OUT   ?= runs/iterate

.PHONY: iterate
iterate: $(BIN)/.installed  ## on-policy DPO rounds + eval after each, resumable (START=, SFT=, DATA=, ITER_OUT=, NPROC=, ARGS=)
	$(BIN)/python -m minidpo.iterate --model $(START) --sft_model $(SFT) --data $(DATA) --heldout $(DATA_DIR)/heldout.jsonl \
		--output_dir $(ITER_OUT) --nproc $(NPROC) --deepspeed $(DS_CONFIG) $(ARGS)

# the page's example prompts, chosen by measurement once per DPO run (app/pick_examples.py)
# MODELS=a,b,c (model sources, name=source, or run folders): a pool for the arena; SFT= / DPO= given on the
# command line join it as the default pair
MODELS     ?=
app: $(BIN)/.installed  ## SFT and DPO side by side, the arena, the leaderboard at http://127.0.0.1:$(PORT) (SFT=, DPO=, MODELS=a,b,c|runs, TOKENIZER=)
	@test -n "$(MODELS)" || test -f $(dir $(DPO))app_examples.json || ! test -f $(DATA_DIR)/heldout.jsonl || \
		$(BIN)/python -m app.pick_examples --sft $(SFT) --dpo $(DPO) --data $(DATA_DIR)/heldout.jsonl $(if $(TOKENIZER),--tokenizer $(TOKENIZER))
	$(BIN)/python -m app.compare $(if $(MODELS),--models $(MODELS) $(if $(filter command line,$(origin SFT)),--sft $(SFT)) \
		$(if $(filter command line,$(origin DPO)),--dpo $(DPO)),--sft $(SFT) --dpo $(DPO)) \
		$(if $(TOKENIZER),--tokenizer $(TOKENIZER)) --port $(PORT) $(ARGS)

tensorboard: $(BIN)/.installed  ## serve the runs' TensorBoard logs on 127.0.0.1:6006
	$(BIN)/tensorboard --logdir runs --host 127.0.0.1 --port 6006

bench: $(BIN)/.bench-installed  ## minidpo vs TRL vs a seed-style loop: pairs/s, padding, RSS, MFU -> runs/bench (ARGS=)
	$(BIN)/python -m minidpo.bench $(ARGS)

.PHONY: gpu-check
gpu-check: $(BIN)/.bench-installed  ## on one GPU, < 8 min: 0.5B model, bf16/fp16, ZeRO-2/3, shared prompt on/off, bench vs TRL -> runs/gpu-check (toy size on a CPU)
	$(BIN)/python -m minidpo.bench.gpu_check $(ARGS)

test: $(BIN)/.bench-installed  ## the whole test suite (real engines, real browser)
	$(BIN)/python -m pytest -q $(ARGS)

clean:  ## remove runs, generated data and caches (keeps .venv)
	rm -rf runs $(DATA_DIR) .cache .pytest_cache

# recipes for other models (e.g. mk/smollm2.mk)
-include mk/*.mk
