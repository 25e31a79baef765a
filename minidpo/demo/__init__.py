"""The embedded demo: bundled bilingual preference data, a rule-based judge, and model presets.

    python -m minidpo.demo.generate --out data/demo                        # train/heldout JSONL + manifest
    python -m minidpo.demo.presets --data data/demo --out runs/demo-init   # tokenizer + untrained model
    (SFT with minidpo.sft, DPO with the trainer, then)  python -m minidpo.eval ... --judge minidpo.demo.judge:judge_heldout

    minidpo.demo.generate   generate(seed, n_train, n_heldout), write_dataset(out_dir, ...), read_jsonl(path)
    minidpo.demo.templates  the phrase tables the records are built from (prompts, answers, topics)
    minidpo.demo.judge      judge(axis, prompt, answer, lang, meta) -> bool, judge_record(record, answer),
                            judge_heldout(pair, answer): the judge `python -m minidpo.eval --judge` takes
    minidpo.demo.presets    PRESETS, build_model(preset, tokenizer), make_init_model(out_dir, preset, texts)

Submodules are imported on use (so `python -m minidpo.demo.<module>` runs cleanly). See docs/demo.md.
"""

import importlib

_EXPORTS = {
    "AXES": "generate", "LANGS": "generate", "generate": "generate", "read_jsonl": "generate",
    "write_dataset": "generate", "judge": "judge", "judge_record": "judge", "PRESETS": "presets",
    "build_model": "presets", "make_init_model": "presets",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
