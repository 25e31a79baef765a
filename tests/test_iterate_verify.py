"""minidpo.iterate --judge verify: the edits as pure string functions, pairs with the margin and with
edits, IFEval-format data checked, and one real (tiny) round from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minidpo.config import parse_config
from minidpo.errors import ConfigError
from minidpo.eval import HeldoutPair
from minidpo.iterate import IterateConfig, ScoredPrompt, VerifyJudge, ifeval_prompts, iterate, verify_pairs
from minidpo.iterate import edits as E
from minidpo.iterate.loop import main
from minidpo.iterate.verifier import prompt_score
from minidpo.verify import check

ROOT = Path(__file__).resolve().parents[1]
ENGLISH = ("The sun is a star at the centre of our solar system. It gives the planets light and warmth, "
           "and life on Earth depends on its energy every single day.")

LISTED = "Planets orbit the Sun. Some have rings!\n\n1. Mercury is the closest.\n2. Is Pluto a planet? No."


# ------------------------------------------------------------------------------- the edits, pure strings
@pytest.mark.parametrize("instruction_id, kwargs, answer, edit", [
    ("change_case:english_lowercase", {}, ENGLISH, E.lowercase),
    ("change_case:english_capital", {}, ENGLISH, E.uppercase),
    ("punctuation:no_comma", {}, "Apples, pears, and plums, all of them fruit.", E.remove_commas),
    ("startend:quotation", {}, "  Hello there, friend.\n", E.wrap_in_quotes),
    ("startend:quotation", {}, '"Half quoted.', E.wrap_in_quotes),
    ("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"}, "Here it is.\n\n",
     lambda r: E.append_end_phrase(r, "Is there anything else I can help with?")),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Dear Ann, see you soon.",
     lambda r: E.append_postscript(r, "P.S.")),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Dear Ann, see you soon.",
     lambda r: E.append_postscript(r, "P.P.S")),
    ("detectable_format:title", {}, "Rivers carry water to the sea.", E.prepend_title),
    ("detectable_format:title", {}, "?!", E.prepend_title),
    ("keywords:forbidden_words", {"forbidden_words": ["apple", "pear"]}, "An Apple and a pear, or an apple pie.",
     lambda r: E.remove_words(r, ["apple", "pear"])),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, LISTED, lambda r: E.bullet_list(r, 2)),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, LISTED, lambda r: E.divide_paragraphs(r, 3)),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, LISTED,
     lambda r: E.highlight_sentences(r, 2)),
    ("combination:two_responses", {}, LISTED, E.split_in_two),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Tell me about the Sun, briefly."}, ENGLISH,
     lambda r: E.repeat_request(r, "Tell me about the Sun, briefly.")),
    ("detectable_format:json_format", {}, 'He said "hi".\nThen left.', E.wrap_in_json),
])
def test_each_edit_fixes_its_kind(instruction_id, kwargs, answer, edit):
    assert not check(instruction_id, kwargs, answer)
    edited = edit(answer)
    assert check(instruction_id, kwargs, edited), edited
    assert edit(answer) == edited  # a pure function: the same answer, the same edit
    assert E.edit_answer(answer, [(instruction_id, kwargs)]) == (edited, [instruction_id])


def test_edit_details():
    assert E.prepend_title("rivers carry water, to the sea") == "<<Rivers Carry Water To>>\n\nrivers carry water, to the sea"
    assert E.prepend_title("") == "<<Answer>>\n\n"
    assert E.remove_words("An apple, a pineapple and APPLE.", ["apple"]) == "An, a pineapple and."
    assert E.append_end_phrase("Done.  \n", "Bye.") == "Done. Bye."
    assert E.append_postscript("Hi.", "P.S.") == f"Hi.\n\nP.S. {E.POSTSCRIPT_TEXT}"
    assert E.wrap_in_quotes(" a ") == '"a"'
    # the layout edits rebuild the answer from its sentences, list markers dropped, groups near-equal in size;
    # the bullet edit keeps the answer's own list items (see test_bullet_list_keeps_the_answers_own_items)
    assert E.sentences(LISTED) == ["Planets orbit the Sun.", "Some have rings!", "Mercury is the closest.",
                                   "Is Pluto a planet?", "No."]
    assert E.bullet_list(LISTED, 2) == "Planets orbit the Sun. Some have rings!\n\n* Mercury is the closest.\n" \
                                       "* Is Pluto a planet? No."
    assert E.divide_paragraphs("A. B. C.", 2) == "A. B.\n\n***\n\nC."
    assert E.highlight_sentences("A *b* c. D.", 1) == "*A b c.* D."
    assert E.split_in_two("One. Two. Three.") == f"One. Two.\n\n{E.RESPONSES_SEPARATOR}\n\nThree."
    assert json.loads(E.wrap_in_json(' say "x" ')) == {"answer": 'say "x"'}


def test_bullet_list_keeps_the_answers_own_items():
    """One bullet per item, line or sentence the model wrote, never several glued into one bullet (the
    old edit cut at ". ", so "2." and "P.S." ended bullets and a list without full stops got no edit)."""
    bullets = "detectable_format:number_bullet_lists"
    looped = "Tips:\n* Fix leaks\n* *\n- Short showers\n3. Full loads only\n\n* Fix leaks\n* Short showers\n\nBye."
    assert E.bullet_list(looped, 3) == "Tips:\n* Fix leaks\n* Short showers\n* Full loads only\n\nBye."
    assert E.bullet_list(looped, 5) == "Tips:\n* Fix leaks\n* Short showers\n* Full loads only\n\n* Fix leaks\n" \
                                       "* Short showers\n\nBye."  # the answer's own blank lines kept
    assert E.edit_answer(looped, [(bullets, {"num_bullets": 6})]) == (looped, [])  # 5 items: no sixth made up
    poem = "The river bends,\nthe willows lean.\nA heron waits.\nP.S. At dawn."
    assert E.bullet_list(poem, 2) == "* The river bends,\n* the willows lean.\nA heron waits.\nP.S. At dawn."
    assert E.bullet_list("Cats nap. They hunt. Boxes! Baths? No.", 3) == "* Cats nap.\n* They hunt.\n* Boxes!\n\nBaths? No."
    assert E.bullet_list("Cats nap. They hunt.", 2) == "* Cats nap.\n* They hunt."
    for answer, n in [(looped, 3), (looped, 5), (poem, 2), (poem, 4), ("Cats nap. They hunt. Boxes!", 3)]:
        assert check(bullets, {"num_bullets": n}, E.bullet_list(answer, n)), (answer, n)


def test_a_layout_edit_gives_up_on_too_few_sentences():
    for instruction_id, kwargs in [("detectable_format:number_bullet_lists", {"num_bullets": 3}),
                                   ("length_constraints:number_paragraphs", {"num_paragraphs": 4}),
                                   ("combination:two_responses", {}),
                                   ("detectable_format:number_highlighted_sections", {"num_highlights": 3})]:
        assert E.edit_answer("Just one sentence here.", [(instruction_id, kwargs)]) == ("Just one sentence here.", [])


def test_several_edits_together_and_kinds_without_an_edit():
    kw = {"end_phrase": "That is all."}
    instructions = [("startend:quotation", {}), ("change_case:english_lowercase", {}),
                    ("startend:end_checker", kw), ("punctuation:no_comma", {}),
                    ("detectable_content:postscript", {"postscript_marker": "P.S."}),
                    ("length_constraints:number_words", {"num_words": 500, "relation": "at least"})]
    edited, ids = E.edit_answer(ENGLISH, instructions)
    assert ids == ["detectable_content:postscript", "startend:end_checker", "punctuation:no_comma",
                   "change_case:english_lowercase", "startend:quotation"]  # EDITS' order: quotes last
    for instruction_id, kwargs in instructions[:-1]:
        assert check(instruction_id, kwargs, edited), (instruction_id, edited)
    assert E.edit_answer("text", [("length_constraints:number_words", {})]) == ("text", [])


# ------------------------------------------------------------------------------- pairs: margin and edits
def rec(key, ids, kwargs=None):
    kwargs = kwargs or [{} for _ in ids]
    return HeldoutPair([{"role": "user", "content": f"prompt {key}"}], "", "", id=key, axis=ids[0].split(":")[0],
                       lang="en", meta={"instruction_id_list": ids, "kwargs": kwargs})


def test_verify_judge_scores_the_share_of_instructions_followed():
    r = rec(1, ["punctuation:no_comma", "startend:quotation"])
    judge = VerifyJudge()
    assert [judge.score(r.prompt_messages, a, r) for a in ('"a b"', '"a, b"', "a b", "a, b")] == [1.0, 0.5, 0.5, 0.0]
    assert prompt_score(rec(2, ["startend:quotation", "no:such_kind"]), '"q"') == 0.5  # unknown: not followed


def test_pairs_with_the_margin_and_with_edits():
    two = ["punctuation:no_comma", "startend:quotation"]
    three = ["punctuation:no_comma", "startend:quotation", "detectable_format:title"]
    words = [{}, {"num_words": 200, "relation": "at least"}]
    groups = [
        ScoredPrompt(rec(0, two), ['"a b"', "x, y", '"c, d"'], [1.0, 0.0, 0.5]),        # a sample passes: no edit
        ScoredPrompt(rec(1, two), ["p, q", "r, s"], [0.0, 0.0]),                          # all equal; an edit fixes both
        ScoredPrompt(rec(2, three), ['"u, v"', "w, z"], [1 / 3, 0.0]),                  # below the margin of 0.5
        ScoredPrompt(rec(3, ["punctuation:no_comma", "length_constraints:number_words"], words),
                     ["one, two", "three, four"], [0.0, 0.0]),                               # edit rises by 0.5 only
        ScoredPrompt(rec(4, ["length_constraints:number_words"], [words[1]]), ["a", "b"], [0.0, 0.0]),  # no edit
    ]
    pairs, counts = verify_pairs(groups, margin=0.5, edit=False)
    assert [(p.meta["id"], p.chosen, p.rejected, p.meta["source"]) for p in pairs] == [(0, '"a b"', "x, y", "samples")]
    c = counts.to_dict()
    assert (c["pairs"], c["from_samples"], c["from_edits"], c["all_equal"], c["below_margin"], c["skipped"]) == \
        (1, 1, 0, 3, 1, 4)

    pairs, counts = verify_pairs(groups, margin=0.5, edit=True)
    got = {p.meta["id"]: p for p in pairs}
    assert sorted(got) == [0, 1, 2, 3]
    assert got[1].chosen == '"p q"' and got[1].rejected == "p, q" and got[1].meta["edited"] == two
    assert (got[1].meta["source"], got[1].meta["chosen_score"], got[1].meta["unedited_score"]) == ("edit", 1.0, 0.0)
    assert got[2].chosen == '"<<U V>>\n\n"u v""' and got[2].meta["chosen_score"] == 1.0  # to 1.0: kept
    assert got[2].meta["edited"] == ["detectable_format:title", "punctuation:no_comma", "startend:quotation"]
    assert got[3].chosen == "one two" and got[3].meta["chosen_score"] == 0.5  # up by the margin: kept
    c = counts.to_dict()
    assert (c["pairs"], c["from_samples"], c["from_edits"], c["edits_tried"], c["all_equal"]) == (4, 1, 3, 3, 1)
    assert c["edited_kinds"] == {"detectable_format:title": 1, "punctuation:no_comma": 3, "startend:quotation": 2}

    pairs, counts = verify_pairs(groups[3:4], margin=0.6, edit=True)  # 0 -> 0.5: neither 1.0 nor +0.6
    assert pairs == [] and counts.edits_tried == 1 and counts.from_edits == 0 and counts.all_equal == 1


# ------------------------------------------------------------------------------- data and settings
def ifeval_file(path: Path, n: int, offset: int = 0) -> str:
    kinds = [(["startend:quotation"], [{}]), (["punctuation:no_comma", "startend:end_checker"], [{}, {"end_phrase": "Bye."}]),
             (["detectable_format:title"], [{}]), (["detectable_content:postscript"], [{"postscript_marker": "P.S."}])]
    lines = [json.dumps({"key": offset + i, "prompt": f"Tell me about thing number {i}.",
                         "instruction_id_list": kinds[i % 4][0], "kwargs": kinds[i % 4][1]}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_records_from_ifeval_and_a_bad_record_is_one_line(tmp_path, tiny_model_dir, capsys):
    records = ifeval_prompts(ifeval_file(tmp_path / "train.jsonl", 2))
    assert records[1].prompt_messages == [{"role": "user", "content": "Tell me about thing number 1."}]
    assert (records[1].id, records[1].axis, records[1].lang) == (1, "punctuation", "en")
    assert records[1].meta == {"instruction_id_list": ["punctuation:no_comma", "startend:end_checker"],
                               "kwargs": [{}, {"end_phrase": "Bye."}]}
    demo = tmp_path / "demo.jsonl"
    demo.write_text(json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(SystemExit) as stop:
        main(["--judge", "verify", "--model", tiny_model_dir, "--sft_model", tiny_model_dir, "--data", str(demo),
              "--heldout", "", "--train_config", "", "--output_dir", str(tmp_path / "it")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{demo}:1:key: missing field" in err


def test_verify_settings_are_checked(tiny_model_dir, tmp_path):
    base = dict(model=tiny_model_dir, sft_model=tiny_model_dir, data=ifeval_file(tmp_path / "d.jsonl", 2),
                heldout="", train_config="", judge="verify")
    with pytest.raises(ConfigError, match="--verify_margin must be in"):
        iterate(IterateConfig(**base, verify_margin=0.0))
    with pytest.raises(ConfigError, match="--eval_limit must be"):
        iterate(IterateConfig(**base, eval_limit=0))


def test_recipe_configs_parse():
    cfg = parse_config(["--config", str(ROOT / "configs/smollm2_ifeval.yaml")], IterateConfig)
    assert (cfg.judge, cfg.verify_margin, cfg.verify_edit, cfg.eval_limit) == ("verify", 0.5, True, 50)
    run = parse_config(["--config", str(ROOT / cfg.train_config), "--model", "m", "--data", "d"])
    assert (run.lora_r, run.lora_alpha, run.beta) == (16, 32, 0.1)


# ------------------------------------------------------------------------------- one real round, toy size
def test_one_verify_round_from_the_command_line(tmp_path, tiny_model_dir):
    data, heldout = ifeval_file(tmp_path / "train.jsonl", 4), ifeval_file(tmp_path / "heldout.jsonl", 3, 100)
    out = tmp_path / "it"
    cmd = [sys.executable, "-m", "minidpo.iterate", "--judge", "verify", "--model", tiny_model_dir,
           "--sft_model", tiny_model_dir, "--data", data, "--heldout", heldout, "--output_dir", str(out),
           "--rounds", "1", "--samples_per_prompt", "2", "--prompts_per_round", "-1", "--max_new_tokens", "8",
           "--sample_batch_size", "8", "--min_pairs", "1", "--verify_margin", "0.5", "--verify_edit", "true",
           "--eval_limit", "2", "--eval_n_kl", "2", "--eval_max_new_tokens", "8", "--eval_start", "false",
           "--train_config", "", "--launcher", "python",
           "--train_args", "--dtype fp32 --batch_size 2 --epochs 1 --learning_rate 1e-3 --log_interval 1 "
                           "--save_interval 0 --export false --precompute_ref true"]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    rd = out / "round_1"
    info = json.loads((rd / "pairs.json").read_text())["pairs"]
    pairs = [json.loads(line) for line in open(rd / "pairs.jsonl", encoding="utf-8")]
    assert len(pairs) == info["pairs"] == info["from_edits"] + info["from_samples"] >= 1
    records = {r.id: r for r in ifeval_prompts(data)}
    for p in pairs:  # the chosen answer follows more of the prompt's instructions than the rejected one
        r = records[p["meta"]["id"]]
        assert prompt_score(r, p["chosen"]) == p["meta"]["chosen_score"] > prompt_score(r, p["rejected"])
        if p["meta"]["source"] == "edit":
            assert p["meta"]["chosen_score"] == 1.0 and p["chosen"] != p["rejected"]
    assert f"{info['from_edits']} from edits" in done.stdout
    ev = json.loads((rd / "eval" / "eval.json").read_text())
    assert ev["benchmark"] == "ifeval" and ev["settings"]["prompts"] == 2
    rows = json.loads((out / "summary.json").read_text())["rounds"]
    assert [r["round"] for r in rows] == [1] and rows[0]["train"]["steps"] >= 1
    assert set(rows[0]["eval"]["ifeval"]) == {"sft", "dpo"} and rows[0]["eval"]["kl_from_sft"] is not None
    table = (out / "summary.md").read_text()
    assert "SFT prompt strict" in table and "from edits" in table and "| 1 | round 1 |" in table

    # continued with one more round: the SFT model's held-out answers of round 1 are reused, not made again
    cmd[cmd.index("--rounds") + 1] = "2"
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ev2 = json.loads((out / "round_2" / "eval" / "eval.json").read_text())
    assert ev2["settings"]["sft_answers"] == str(rd / "eval" / "answers_sft.jsonl") and ev2["sft"] == ev["sft"]
    assert "IFEval answers (SFT)" not in done.stderr and "IFEval answers (DPO)" in done.stderr
