"""Bundled bilingual (zh + en) preference data for the demo, generated offline from templates.

    python -m minidpo.demo.generate --out data/demo [--seed 0] [--n-train 4000] [--n-heldout 320]

writes `train.jsonl`, `heldout.jsonl` and `manifest.json`. Every record is in MiniMind's DPO tutorial format
`{"prompt", "chosen", "rejected"}` plus `axis`, `lang`, `id` and `meta` (what the judge needs).

Four axes, each judged by a rule in `minidpo.demo.judge`:

    refusal     harmful request -> a polite refusal (chosen) vs going along (rejected). The "going
                along" answers are deliberately vague and harmless: no answer anywhere in the demo
                data (minidpo.demo.templates) contains instructions for anything.
    structure   harmless request -> numbered, complete steps (chosen) vs one vague line (rejected)
    language    question in zh or en -> answer in the question's language vs in the other one
    fact        "what kind of thing is X?" -> its true category vs a wrong one
    (arithmetic "what is a + b?" -> the correct sum vs a wrong one: buildable, not in the default data)

Held-out prompts never occur in training (`generate()` asserts it), but what answering them needs
does: harmful and harmless requests are a verb applied to an object, sharing templates and objects,
and a held-out request is a (verb, object) combination never seen in training; a held-out language
or fact prompt is a phrasing a topic is never asked in, in that language. See `split_items`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

from minidpo.demo.templates import (
    ARITH_ANSWERS, ARITH_PROMPTS, CATEGORY_WORDS, FACT_PROMPTS, GOALS, HARMFUL_VERBS, HARMLESS_VERBS,
    LANGUAGE_ANSWERS, LANGUAGE_PROMPTS, OBJECTS, OPERANDS, REFUSAL_CHOSEN, REFUSAL_PROMPTS, REFUSAL_REJECTED,
    STRUCTURE_INTROS, STRUCTURE_OUTROS, STRUCTURE_POINTS, STRUCTURE_PROMPTS, STRUCTURE_REJECTED, TOPICS,
    WRONG_OFFSETS,
)
from minidpo.fsutil import write_jsonl_atomic

AXES = ("refusal", "structure", "language", "fact")  # the default data set
ALL_AXES = AXES + ("arithmetic",)  # arithmetic: see the note at templates.ARITH_PROMPTS
LANGS = ("en", "zh")
HELDOUT_FRACTION = 0.2


# ---------------------------------------------------------------------------------------- items
# An item is (key, payload...) for one language; its key ends with the language. Prompts of different
# items never coincide. The held-out part of an axis:
#   refusal, structure   (verb, object) combinations, held out in both languages; every held-out
#                        verb and object occurs in training in other combinations
#   language             (topic, language) cells: a topic is asked about in training in the other language
#   arithmetic           (a, b, language) cells: the same sum is asked in training in the other language
def _requests(verbs: list, axis: str) -> list[tuple]:
    return [((axis, v, kind, o, lang), en.format(o=obj[0]), zh.format(o=obj[1]))
            for v, (en, zh, kind) in enumerate(verbs) for o, obj in enumerate(OBJECTS[kind]) for lang in LANGS]


def _items(axis: str) -> list[tuple]:
    """Every item of an axis, in a fixed order."""
    if axis == "refusal":
        return _requests(HARMFUL_VERBS, axis)
    if axis == "structure":
        return (_requests(HARMLESS_VERBS, axis)
                + [((axis, "goal", None, g, lang), en, zh) for g, (en, zh) in enumerate(GOALS) for lang in LANGS])
    if axis == "language":
        return [((axis, cat, en, t, lang), cat, en, zh, t) for cat, words in TOPICS.items() for en, zh in words
                for lang in LANGS for t in range(len(LANGUAGE_PROMPTS[lang]))]
    if axis == "fact":
        return [((axis, cat, en, t, lang), cat, en, zh, t) for cat, words in TOPICS.items() for en, zh in words
                for lang in LANGS for t in range(len(FACT_PROMPTS[lang]))]
    if axis == "arithmetic":
        return [((axis, a, b, lang), a, b) for a in OPERANDS for b in OPERANDS for lang in LANGS]
    raise ValueError(f"unknown axis {axis!r}: choose one of {', '.join(ALL_AXES)}")


def item_lang(item: tuple) -> str:
    return item[0][-1]


def split_items(axis: str, seed: int, fraction: float = HELDOUT_FRACTION) -> tuple[list, list]:
    """Deterministic (train_items, heldout_items) for one axis, both languages; see the note above."""
    rng = random.Random(f"{seed}-split-{axis}")
    items = _items(axis)
    if axis in ("refusal", "structure"):
        # per verb, hold out round(fraction * objects) combinations (at least one), never an object's last
        # training combination; goals stay in training; the same combinations in both languages
        by_verb: dict = {}
        for it in items:
            if it[0][1] != "goal" and item_lang(it) == LANGS[0]:
                by_verb.setdefault(it[0][1], []).append(it[0][3:4] + it[0][2:3])
        objects_left = Counter()
        for combos in by_verb.values():
            objects_left.update(combos)
        held = set()
        for verb, combos in by_verb.items():
            combos = combos[:]
            rng.shuffle(combos)
            k = max(1, round(len(combos) * fraction))
            for c in combos:
                if k and objects_left[c] > 1:
                    held.add((verb,) + c)
                    objects_left[c] -= 1
                    k -= 1
        is_held = lambda it: (it[0][1], it[0][3], it[0][2]) in held  # noqa: E731
    elif axis in ("language", "fact"):
        # per topic and language, one of the prompt templates (a phrasing the topic is never asked in)
        by_topic: dict = {}
        for it in items:
            by_topic.setdefault((it[0][2], item_lang(it)), []).append(it[0])
        held = {rng.choice(keys) for keys in by_topic.values()}
        is_held = lambda it: it[0] in held  # noqa: E731
    else:
        # (sum, language) cells: a fraction of the items per language, never both languages of one
        bases = [it[0][:-1] for it in items if item_lang(it) == LANGS[0]]
        rng.shuffle(bases)
        k = max(1, round(len(bases) * fraction))
        held = {base + (lang,) for i, lang in enumerate(LANGS) for base in bases[i * k:(i + 1) * k]}
        is_held = lambda it: it[0] in held  # noqa: E731
    train = [it for it in items if not is_held(it)]
    heldout = [it for it in items if is_held(it)]
    return train, heldout


# ------------------------------------------------------------------------------------- examples
def _second_person(text: str) -> str:
    return re.sub(r"\bmy\b", "your", text)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _topic_in_prompt(category: str, word: str) -> str:
    if category in ("animal", "fruit"):
        return "the " + word
    if category == "job":
        return "the job of " + ("an " if word[0] in "aeiou" else "a ") + word
    return word


def _fact_subject(category: str, word: str) -> tuple[str, str]:
    """(the topic as it is asked about, as the subject of the answer), in English."""
    if category in ("animal", "fruit"):
        return "the " + word, "The " + word
    if category == "job":
        article = "an " if word[0] in "aeiou" else "a "
        return article + word, "Being " + article + word
    return word, _cap(word)


def make_example(axis: str, item: tuple, lang: str, rng: random.Random) -> dict:
    """One preference record for `item` in `lang`, with templates drawn from `rng`."""
    if axis == "refusal":
        _, en, zh = item
        prompt = rng.choice(REFUSAL_PROMPTS[lang]).format(x=en if lang == "en" else zh)
        chosen, rejected = rng.choice(REFUSAL_CHOSEN[lang]), rng.choice(REFUSAL_REJECTED[lang])
        meta = {"act": en}
    elif axis == "structure":
        _, en, zh = item
        prompt = rng.choice(STRUCTURE_PROMPTS[lang]).format(x=en if lang == "en" else zh)
        x = _second_person(en) if lang == "en" else zh
        keep = sorted(rng.sample(range(len(STRUCTURE_POINTS[lang])), rng.choice((3, 4))))
        points = [STRUCTURE_POINTS[lang][i] for i in keep]
        sep = "\n"
        chosen = sep.join([rng.choice(STRUCTURE_INTROS[lang]).format(x=x)]
                          + [f"{i}. {p}" for i, p in enumerate(points, 1)]
                          + [rng.choice(STRUCTURE_OUTROS[lang])])
        rejected = rng.choice(STRUCTURE_REJECTED[lang]).format(x=x)
        meta = {"goal": en}
    elif axis == "language":
        _, cat, en, zh, t = item
        x = _topic_in_prompt(cat, en) if lang == "en" else zh
        prompt = LANGUAGE_PROMPTS[lang][t].format(x=x)
        en_answer = LANGUAGE_ANSWERS[cat][0].format(x=en, X=_cap(en), a="an" if en[0] in "aeiou" else "a")
        zh_answer = LANGUAGE_ANSWERS[cat][1].format(x=zh)
        chosen, rejected = (en_answer, zh_answer) if lang == "en" else (zh_answer, en_answer)
        meta = {"topic": en, "category": cat, "wrong_lang": "zh" if lang == "en" else "en"}
    elif axis == "fact":
        _, cat, en, zh, t = item
        asked, subject = _fact_subject(cat, en)
        prompt = FACT_PROMPTS[lang][t].format(x=asked if lang == "en" else zh)
        wrong = rng.choice([c for c in CATEGORY_WORDS if c != cat])
        say = (lambda c: f"{subject} is {CATEGORY_WORDS[c][0]}.") if lang == "en" else \
            (lambda c: f"{zh}是{CATEGORY_WORDS[c][1]}。")
        chosen, rejected = say(cat), say(wrong)
        meta = {"topic": en, "category": cat, "wrong": wrong}
    elif axis == "arithmetic":
        _, a, b = item
        s = a + b
        wrong = [s + d for d in WRONG_OFFSETS if s + d > 0 and s + d not in (a, b)]
        w = rng.choice(wrong)
        prompt = rng.choice(ARITH_PROMPTS[lang]).format(a=a, b=b)
        template = rng.choice(ARITH_ANSWERS[lang])
        chosen, rejected = template.format(a=a, b=b, s=s), template.format(a=a, b=b, s=w)
        meta = {"a": a, "b": b, "op": "+", "answer": s, "wrong": w}
    else:
        raise ValueError(f"unknown axis {axis!r}: choose one of {', '.join(ALL_AXES)}")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "axis": axis, "lang": lang, "meta": meta}


def _fill(items: list, axis: str, lang: str, n: int, rng: random.Random) -> list[dict]:
    """n records from `items`, avoiding exact repeats of a (prompt, chosen, rejected) triple when possible."""
    out, seen, tries = [], set(), 0
    while len(out) < n:
        ex = make_example(axis, rng.choice(items), lang, rng)
        key = (ex["prompt"], ex["chosen"], ex["rejected"])
        tries += 1
        if key in seen and tries < 50 * n:
            continue
        seen.add(key)
        out.append(ex)
    return out


def _per_cell(n: int) -> list[int]:
    cells = len(AXES) * len(LANGS)
    return [n // cells + (1 if i < n % cells else 0) for i in range(cells)]


def generate(seed: int = 0, n_train: int = 4000, n_heldout: int = 320) -> tuple[list[dict], list[dict]]:
    """(train, heldout) records, balanced over axis x language, shuffled; deterministic in `seed`."""
    rng = random.Random(seed)
    splits = {"train": [], "heldout": []}
    counts = {"train": _per_cell(n_train), "heldout": _per_cell(n_heldout)}
    cell = 0
    for axis in AXES:
        train_items, heldout_items = split_items(axis, seed)
        for lang in LANGS:
            for name, items in (("train", train_items), ("heldout", heldout_items)):
                items = [it for it in items if item_lang(it) == lang]
                splits[name] += _fill(items, axis, lang, counts[name][cell], rng)
            cell += 1
    for name, records in splits.items():
        rng.shuffle(records)
        for i, r in enumerate(records):
            r["id"] = f"{name}-{i:05d}"
    overlap = {r["prompt"] for r in splits["train"]} & {r["prompt"] for r in splits["heldout"]}
    assert not overlap, f"held-out prompts leaked into training: {sorted(overlap)[:3]}"
    return splits["train"], splits["heldout"]


def manifest(train: list[dict], heldout: list[dict], seed: int) -> dict:
    def counts(records):
        c = Counter((r["axis"], r["lang"]) for r in records)
        return {axis: {lang: c[(axis, lang)] for lang in LANGS} for axis in AXES}

    return {
        "seed": seed,
        "format": "JSONL, one {prompt, chosen, rejected, axis, lang, id, meta} object per line",
        "files": {"train": "train.jsonl", "heldout": "heldout.jsonl"},
        "n": {"train": len(train), "heldout": len(heldout)},
        "unique_prompts": {"train": len({r["prompt"] for r in train}),
                           "heldout": len({r["prompt"] for r in heldout})},
        "counts": {"train": counts(train), "heldout": counts(heldout)},
        "axes": list(AXES),
        "langs": list(LANGS),
    }



def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_dataset(out_dir, seed: int = 0, n_train: int = 4000, n_heldout: int = 320) -> dict:
    """Generate and write train.jsonl, heldout.jsonl and manifest.json into `out_dir`; returns the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = generate(seed, n_train, n_heldout)
    write_jsonl_atomic(out / "train.jsonl", train)
    write_jsonl_atomic(out / "heldout.jsonl", heldout)
    man = manifest(train, heldout, seed)
    (out / "manifest.json").write_text(json.dumps(man, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return man


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m minidpo.demo.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder for train.jsonl, heldout.jsonl, manifest.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-heldout", type=int, default=320)
    args = p.parse_args(argv)
    man = write_dataset(args.out, args.seed, args.n_train, args.n_heldout)
    print(f"wrote {man['n']['train']} training and {man['n']['heldout']} held-out pairs to {args.out} "
          f"({man['unique_prompts']['train']} / {man['unique_prompts']['heldout']} distinct prompts)")
    for axis in AXES:
        print(f"  {axis:<11} train {man['counts']['train'][axis]}  heldout {man['counts']['heldout'][axis]}")


if __name__ == "__main__":
    main()
