"""TRL's DPOTrainer in the bench, with the settings minidpo uses (TRL's own defaults otherwise: the
reference model runs on every step, chosen and rejected are two padded sequences)."""

from __future__ import annotations

import time

from minidpo.bench.settings import Settings


class _CountingCollator:
    """Wraps TRL's collator to count the positions each batch computes, padding included."""

    def __init__(self, inner):
        self.inner, self.positions, self.real_positions = inner, 0, 0

    def __call__(self, examples):
        batch = self.inner(examples)
        self.positions += batch["input_ids"].numel()
        self.real_positions += int(batch["attention_mask"].sum())
        return batch


def run(paths: dict, s: Settings, out_dir: str, order=None) -> dict:
    import json

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    with open(paths["data"]) as f:
        rows = [json.loads(line) for line in f]
    if order is not None:  # the bench's numerics check: these batches, in this order
        rows = [rows[i] for batch in order for i in batch]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "chosen": [{"role": "assistant", "content": r["chosen"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(paths["model"])
    load = lambda: AutoModelForCausalLM.from_pretrained(paths["model"], dtype=torch.float32)  # noqa: E731
    args = DPOConfig(
        output_dir=out_dir, per_device_train_batch_size=s.batch_size, gradient_accumulation_steps=1,
        learning_rate=s.learning_rate, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=s.max_grad_norm, beta=s.beta, loss_type=["sigmoid"], max_length=s.max_length,
        bf16=s.dtype == "bf16", use_cpu=not torch.cuda.is_available(), num_train_epochs=1, max_steps=s.max_steps, seed=s.seed,
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
        optim="adamw_torch")

    class Trainer(DPOTrainer):
        def _get_train_sampler(self, *a, **k):
            if order is None:
                return super()._get_train_sampler(*a, **k)
            return torch.utils.data.SequentialSampler(self.train_dataset)

    losses, clock = [], {}

    class Watch(TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            clock["end"] = time.perf_counter()

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    trainer = Trainer(model=load(), ref_model=load(), args=args, train_dataset=data, processing_class=tokenizer,
                      callbacks=[Watch()])
    counter = _CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    tokenized = trainer.train_dataset
    out = trainer.train()
    return {"seconds": clock["end"] - clock["start"], "pairs": out.global_step * s.batch_size,
            "steps": out.global_step, "losses": losses, "positions": counter.positions,
            "real_positions": counter.real_positions,
            "tokenized": [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in tokenized]}
