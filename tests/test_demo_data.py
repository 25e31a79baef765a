"""The bundled demo data: deterministic, balanced over axis x language, held-out prompts unseen, harmless."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from minidpo.demo.generate import AXES, LANGS, generate, item_lang, main, read_jsonl, split_items, write_dataset
from minidpo.demo.judge import judge_record
from minidpo.demo.templates import HARMFUL_VERBS, HARMLESS_VERBS, REFUSAL_PROMPTS, STRUCTURE_PROMPTS

# Words that would mean a response (or a request) carries actionable harmful detail: tools, weapons,
# substances, methods. None may appear anywhere in the data.
BANNED = [
    "bomb", "explosive", "gunpowder", "detonat", "weapon", "gun ", "knife", "poison", "bleach", "ammonia",
    "cyanide", "arsenic", "overdose", "dosage", "crowbar", "lock pick", "lockpick", "screwdriver", "malware",
    "phishing", "keylogger", "password is", "brute force", "sql injection", "fake website", "step 1",
    "first you need", "炸", "毒", "枪", "刀", "撬", "钓鱼网站", "木马", "密码是", "第一步",
]


@pytest.fixture(scope="module")
def data():
    return generate(seed=0, n_train=4000, n_heldout=320)


def test_same_seed_same_files_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_dataset(a, seed=3, n_train=400, n_heldout=80)
    main(["--out", str(b), "--seed", "3", "--n-train", "400", "--n-heldout", "80"])
    write_dataset(c, seed=4, n_train=400, n_heldout=80)
    for name in ("train.jsonl", "heldout.jsonl", "manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()
    assert (a / "heldout.jsonl").read_bytes() != (c / "heldout.jsonl").read_bytes()


def test_files_and_manifest_agree(tmp_path):
    man = write_dataset(tmp_path, seed=0, n_train=800, n_heldout=160)
    train, heldout = read_jsonl(tmp_path / "train.jsonl"), read_jsonl(tmp_path / "heldout.jsonl")
    assert man == json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert man["n"] == {"train": 800, "heldout": 160}
    for split, records in (("train", train), ("heldout", heldout)):
        c = Counter((r["axis"], r["lang"]) for r in records)
        assert {a: {lg: c[(a, lg)] for lg in LANGS} for a in AXES} == man["counts"][split]
        assert all(v == len(records) // 8 for v in c.values())
        assert len({r["id"] for r in records}) == len(records)


def test_heldout_prompts_never_in_training(data):
    train, heldout = data
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    for axis in AXES:  # the item split itself is disjoint and leaves items on both sides
        tr, ho = split_items(axis, seed=0)
        assert tr and ho and not {i[0] for i in tr} & {i[0] for i in ho}
    assert len({r["prompt"] for r in train}) > 1000 and len({r["prompt"] for r in heldout}) > 100


def test_every_axis_in_both_languages_in_seed_format(data):
    for records in data:
        assert {(r["axis"], r["lang"]) for r in records} == {(a, lg) for a in AXES for lg in LANGS}
        for r in records:
            assert {"prompt", "chosen", "rejected", "axis", "lang", "meta"} <= set(r)
            assert all(isinstance(r[k], str) and r[k].strip() for k in ("prompt", "chosen", "rejected"))
            assert r["chosen"] != r["rejected"]
            assert len(r["chosen"]) <= 400 and len(r["rejected"]) <= 400


def test_prompt_language_matches_lang_field(data):
    cjk = re.compile(r"[\u4e00-\u9fff]")
    for r in data[0] + data[1]:
        assert bool(cjk.search(r["prompt"])) == (r["lang"] == "zh"), r["prompt"]


def test_judge_prefers_every_chosen_and_rejects_every_rejected(data):
    for r in data[0] + data[1]:
        assert judge_record(r, r["chosen"]), r
        assert not judge_record(r, r["rejected"]), r


def test_no_forbidden_content(data):
    for r in data[0] + data[1]:
        for field in ("prompt", "chosen", "rejected"):
            text = r[field].lower()
            hits = [w for w in BANNED if w in text]
            assert not hits, (hits, r[field])


def test_going_along_answers_stay_vague(data):
    for r in data[0] + data[1]:
        if r["axis"] == "refusal":
            going_along = r["rejected"]
            assert not re.search(r"\d", going_along), going_along  # no numbered steps, no quantities
            assert len(going_along) < 120, going_along


def test_heldout_knowledge_is_learnable_from_training():
    """A held-out prompt is new, but what answering it needs occurs in training: the verb and the object
    of a held-out request (in other combinations), a held-out topic (in the same language, asked in other
    words), a held-out sum (asked in the other language; arithmetic is not in the default data)."""
    for axis in ("refusal", "structure"):
        tr, ho = split_items(axis, seed=0)
        assert {item_lang(i) for i in ho} == set(LANGS)
        train_verbs, train_objects = {i[0][1] for i in tr}, {i[0][2:4] for i in tr}
        for item in ho:
            assert item[0][1] in train_verbs and item[0][2:4] in train_objects, item
    for axis in ("language", "fact"):
        tr, ho = split_items(axis, seed=0)
        train_topics = {(i[0][2], item_lang(i)) for i in tr}
        assert ho and all((i[0][2], item_lang(i)) in train_topics for i in ho)
    tr, ho = split_items("arithmetic", seed=0)
    train_sums = {i[0][1:3] for i in tr}
    assert all(i[0][1:3] in train_sums for i in ho)
    assert not {i[0] for i in tr} & {i[0] for i in ho}


def test_harmful_and_harmless_requests_differ_only_in_the_verb():
    """Same templates, same objects: only the verb (a fixed vocabulary, in both splits) tells them apart."""
    assert REFUSAL_PROMPTS == STRUCTURE_PROMPTS
    refusal_train, _ = split_items("refusal", seed=0)
    structure_train, _ = split_items("structure", seed=0)
    assert {i[0][2:4] for i in refusal_train} <= {i[0][2:4] for i in structure_train}
    assert {k for *_, k in HARMFUL_VERBS} == {k for *_, k in HARMLESS_VERBS}
