# Constraint DPO of SmolLM2-135M-Instruct on verifiable instructions, judged by IFEval's verifiers
# (minidpo.verify), on-policy: `python -m minidpo.iterate --judge verify`. See docs/ifeval.md.
#   make smollm2-ifeval-data   our own constraint prompts: train.jsonl (600) and a held-out split (150)
#   make smollm2-ifeval        LoRA DPO rounds from SmolLM2 (about 40 min measured on 2 CPU cores with bf16)
#   make smollm2-ifeval-eval IFEVAL=path/to/input_data.jsonl   IFEval's 541 prompts: SmolLM2 vs the last round
#   make smollm2-ifeval-app    both side by side, example prompts picked by measurement on the held-out split
SMOLLM2_IFEVAL_DATA   ?= $(DATA_DIR)/ifeval
SMOLLM2_IFEVAL_OUT    ?= runs/smollm2-ifeval
SMOLLM2_IFEVAL_CONFIG ?= configs/smollm2_ifeval.yaml
SMOLLM2_IFEVAL_DTYPE  ?= $(SMOLLM2_DTYPE)
IFEVAL ?=

.PHONY: smollm2-ifeval-data smollm2-ifeval smollm2-ifeval-eval smollm2-ifeval-app

$(SMOLLM2_IFEVAL_DATA)/train.jsonl: | $(BIN)/.installed
	$(BIN)/python -m minidpo.verify.prompts --out $(SMOLLM2_IFEVAL_DATA) --n_train 600 --n_heldout 150 --seed 0

smollm2-ifeval-data: $(SMOLLM2_IFEVAL_DATA)/train.jsonl  ## constraint prompts of our own in IFEval's format (train.jsonl, heldout.jsonl)

smollm2-ifeval: smollm2-deps smollm2-ifeval-data  ## on-policy constraint DPO of SmolLM2, verifier judge, about an hour on 2 cores, resumable (SMOLLM2_IFEVAL_OUT=, ARGS=)
	model=$(SMOLLM2_HF) && \
	$(BIN)/python -m minidpo.iterate --config $(SMOLLM2_IFEVAL_CONFIG) --model "$$model" --sft_model "$$model" \
		--data $(SMOLLM2_IFEVAL_DATA)/train.jsonl --heldout $(SMOLLM2_IFEVAL_DATA)/heldout.jsonl \
		--output_dir $(SMOLLM2_IFEVAL_OUT) --nproc $(NPROC) --deepspeed $(DS_CONFIG) \
		--train_args "--dtype $(SMOLLM2_IFEVAL_DTYPE)" $(ARGS)

smollm2-ifeval-eval: smollm2-deps  ## IFEval (IFEVAL=input_data.jsonl): SmolLM2 vs the last round of smollm2-ifeval
	@test -n "$(IFEVAL)" || { echo "error: set IFEVAL=path/to/input_data.jsonl (IFEval's 541 prompts: instruction_following_eval/data/input_data.jsonl in github.com/google-research/google-research, or the google/IFEval dataset as JSONL; nothing here downloads it, see docs/ifeval.md)" >&2; exit 2; }
	$(call need_rounds,$(SMOLLM2_IFEVAL_OUT),smollm2-ifeval)
	model=$(SMOLLM2_HF) && dpo=$(call last_round,$(SMOLLM2_IFEVAL_OUT)) && \
	$(BIN)/python -m minidpo.eval --benchmark ifeval --data $(IFEVAL) --sft "$$model" --dpo "$$dpo" \
		--output_dir $(SMOLLM2_IFEVAL_OUT)/ifeval $(ARGS)

# the page's examples: held-out constraint prompts (ours) where the DPO model follows every instruction on at
# least 6 of 8 seeds and more often than SmolLM2, picked once per run (app/pick_examples.py --judge verify)
smollm2-ifeval-app: smollm2-deps  ## SmolLM2 vs the last round of smollm2-ifeval side by side, on constraint prompts picked by measurement
	$(call need_rounds,$(SMOLLM2_IFEVAL_OUT),smollm2-ifeval)
	model=$(SMOLLM2_HF) && dpo=$(call last_round,$(SMOLLM2_IFEVAL_OUT)) && \
	{ test -f "$$(dirname $$dpo)/app_examples.json" || $(BIN)/python -m app.pick_examples --judge verify --sft "$$model" \
		--dpo "$$dpo" --data $(SMOLLM2_IFEVAL_DATA)/heldout.jsonl --min_pass 6 --candidates 6 --batch_size 32; } && \
	$(BIN)/python -m app.compare --sft "$$model" --dpo "$$dpo" --port $(PORT) $(ARGS)
