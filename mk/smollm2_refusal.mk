# Refusal without parroting: on-policy DPO of SmolLM2-135M-Instruct on its own answers to the demo's English
# prompts, judged by the demo's rule judge (`python -m minidpo.iterate --judge rule`, `--prefill`). See docs/smollm2.md.
# Measured (5 rounds, ~13 min a round alone, 2-core EPYC with bf16 units): refusal 5% -> 85% in SmolLM2's own words,
# KL 13.0 nats per answer, IFEval -0.8 / -0.2 points; harmless look-alikes refused 13% (SmolLM2 5%): not yet met.
#   make smollm2-refusal        LoRA DPO rounds from SmolLM2, resumable (SMOLLM2_REFUSAL_OUT=, ARGS=)
#   make smollm2-refusal-eval   held-out English prompts: SmolLM2 vs the last round (judged, over-refusal, KL)
SMOLLM2_REFUSAL_OUT    ?= runs/smollm2-refusal
SMOLLM2_REFUSAL_CONFIG ?= configs/smollm2_refusal.yaml
SMOLLM2_REFUSAL_DTYPE  ?= $(shell grep -q avx512_bf16 /proc/cpuinfo 2>/dev/null && echo bf16 || echo fp32)
SMOLLM2_REFUSAL_LAST    = $$($(BIN)/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["rounds"][-1]["export"])' \
                            $(SMOLLM2_REFUSAL_OUT)/summary.json)

.PHONY: smollm2-refusal smollm2-refusal-eval

smollm2-refusal: smollm2-deps smollm2-data  ## on-policy refusal DPO of SmolLM2 (rule judge, its own words), resumable
	model=$(SMOLLM2_HF) && \
	$(BIN)/python -m minidpo.iterate --config $(SMOLLM2_REFUSAL_CONFIG) --model "$$model" --sft_model "$$model" \
		--data $(DATA_DIR)/train_en.jsonl --heldout $(DATA_DIR)/heldout_en.jsonl \
		--output_dir $(SMOLLM2_REFUSAL_OUT) --nproc $(NPROC) --deepspeed $(DS_CONFIG) \
		--train_args "--dtype $(SMOLLM2_REFUSAL_DTYPE)" $(ARGS)

smollm2-refusal-eval: smollm2-deps smollm2-data  ## SmolLM2 vs the last round on all 160 held-out English prompts, then the refusal counts
	@test -f $(SMOLLM2_REFUSAL_OUT)/summary.json || { echo "error: $(SMOLLM2_REFUSAL_OUT)/summary.json not found: run make smollm2-refusal first" >&2; exit 2; }
	model=$(SMOLLM2_HF) && dpo=$(SMOLLM2_REFUSAL_LAST) && \
	$(BIN)/python -m minidpo.eval --sft "$$model" --dpo "$$dpo" --data $(DATA_DIR)/heldout_en.jsonl \
		--output_dir $(SMOLLM2_REFUSAL_OUT)/eval --judge $(JUDGE) --n_generate -1 --n_kl 64 --max_new_tokens 128 \
		--batch_size 16 $(ARGS) && \
	$(BIN)/python -m minidpo.demo.refusals $(SMOLLM2_REFUSAL_OUT)/eval/answers.jsonl
