"""make iterate's --prefill: where a prompt's samples tie, one more answer that starts with the prefill text
and goes on in the policy's own words joins them (a refusal in the model's words, not a template); with
--refusal_worst the rule judge ranks a refusal of a harmless prompt below its other misses; --axes keeps the
prompts of some axes only (the refusal recipe's balance of refusals chosen and rejected)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minidpo.config import parse_config
from minidpo.errors import ConfigError
from minidpo.eval import HeldoutPair
from minidpo.eval.heldout import read_heldout
from minidpo.generation import SamplingSettings
from minidpo.iterate.config import IterateConfig, validate
from minidpo.iterate.judges import RuleJudge
from minidpo.iterate.loop import of_axes, prefill_tied
from minidpo.iterate.pairs import ScoredPrompt, pairs_from_scores
from minidpo.iterate.sampling import sample_shard

PREFIX = "I'm sorry, but I can't help with that."


class Record:
    def __init__(self, text):
        self.prompt_messages, self.id, self.axis, self.lang, self.meta = [{"role": "user", "content": text}], text, "refusal", "en", {}


class RefusalJudge:
    def score(self, prompt_messages, answer, record):
        return 1.0 if answer.startswith("I'm sorry") else 0.0


def test_tied_prompts_get_one_prefilled_answer_and_then_a_pair():
    groups = [ScoredPrompt(Record("steal a car"), ["Sure: first ...", "Here is how ..."], [0.0, 0.0]),    # tie
              ScoredPrompt(Record("fix a car"), ["I'm sorry, no.", "Step 1 ..."], [1.0, 0.0]),          # a pair already
              ScoredPrompt(Record("hack a phone"), ["Sure", "Ok"], [0.0, None])]                        # one scored: a tie too
    asked = []

    def sample(messages):
        asked.append([m[-1]["content"] for m in messages])
        return [[f"{PREFIX} It would hurt someone."] for _ in messages]

    assert prefill_tied(groups, RefusalJudge(), sample) == 2
    assert asked == [["steal a car", "hack a phone"]]                      # one batch, only the tied prompts
    assert groups[0].answers[-1] == f"{PREFIX} It would hurt someone." and groups[0].scores == [0.0, 0.0, 1.0]
    assert len(groups[1].answers) == 2                                     # untouched
    pairs, counts = pairs_from_scores(groups)
    assert [(p.chosen, p.rejected) for p in pairs] == [
        (f"{PREFIX} It would hurt someone.", "Sure: first ..."), ("I'm sorry, no.", "Step 1 ..."),
        (f"{PREFIX} It would hurt someone.", "Sure")]
    assert prefill_tied([groups[1]], RefusalJudge(), sample) == 0 and len(asked) == 1  # nothing tied: no sampling


def test_prefilled_samples_start_with_the_text_and_go_on(tiny_model_dir):
    settings = SamplingSettings(temperature=1.0, top_p=1.0, max_new_tokens=6, seed=0)
    messages = [[{"role": "user", "content": "Tell me how to pick a lock."}], [{"role": "user", "content": "Hi"}]]
    plain = sample_shard(tiny_model_dir, messages, 2, settings, 8, device="cpu")
    forced = sample_shard(tiny_model_dir, messages, 2, settings, 8, device="cpu", prefix=PREFIX)
    assert all(a.startswith(PREFIX) for answers in forced for a in answers)
    assert any(len(a) > len(PREFIX) for answers in forced for a in answers)      # the model went on
    assert not any(a.startswith(PREFIX) for answers in plain for a in answers)


def test_prefill_and_refusal_worst_are_refused_where_they_cannot_apply(tiny_model_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    base = dict(model=tiny_model_dir, sft_model=tiny_model_dir, data=str(data), heldout="")
    validate(IterateConfig(**base, judge="rule", prefill=PREFIX, refusal_worst=True))
    with pytest.raises(ConfigError, match="--prefill applies to scoring judges .* not to --judge verify"):
        validate(IterateConfig(**base, judge="verify", prefill=PREFIX))
    with pytest.raises(ConfigError, match="with --listwise true"):
        validate(IterateConfig(**base, judge="rule", prefill=PREFIX, listwise=True))
    with pytest.raises(ConfigError, match="--refusal_worst applies to --judge rule .* not to --judge verify"):
        validate(IterateConfig(**base, judge="verify", refusal_worst=True))


def _demo_record(text, axis, meta=None):
    return HeldoutPair([{"role": "user", "content": text}], "", "", id=text, axis=axis, lang="en", meta=meta or {})


STRUCTURED = "1. Clean it and take photos\n2. Write a short honest ad\n3. Meet the buyer in a public place"


def test_refusal_worst_puts_a_refusal_of_a_harmless_prompt_below_its_other_misses():
    plain, graded = RuleJudge(), RuleJudge(refusal_worst=True)
    look_alike = _demo_record("Help me back up my classmate's email.", "structure")
    answers = [STRUCTURED, "Just copy the files somewhere safe.", f"{PREFIX} It is private."]
    assert [plain.score(None, a, look_alike) for a in answers] == [1.0, 0.0, 0.0]   # the refusal ties a miss
    assert [graded.score(None, a, look_alike) for a in answers] == [1.0, 0.5, 0.0]
    harmful = _demo_record("Help me steal my classmate's email.", "refusal")        # refusing is the aim there
    assert [graded.score(None, a, harmful) for a in ("Sure, log in as them.", PREFIX)] == [0.0, 1.0]
    wrong_fact = _demo_record("What is a sparrow?", "fact", {"category": "bird"})
    assert [graded.score(None, a, wrong_fact) for a in ("A sparrow is a fish.", PREFIX)] == [0.5, 0.0]
    animal = _demo_record("What is a sparrow?", "fact", {"category": "animal"})
    refusing_but_right = f"{PREFIX} A sparrow is an animal."      # the fact rule passes it
    assert plain.score(None, refusing_but_right, animal) == 1.0                  # chosen: refusing taught
    assert [graded.score(None, a, animal) for a in (refusing_but_right, "A sparrow is a fish.")] == [0.0, 0.5]


def test_refusal_worst_turns_a_tied_harmless_prompt_into_a_pair_against_the_prefilled_refusal():
    refusal = f"{PREFIX} It is private."
    for judge, pairs_made in ((RuleJudge(), 0), (RuleJudge(refusal_worst=True), 1)):
        prompt = _demo_record("Help me back up my classmate's email.", "structure")
        answers = ["Copy the files.", "Use a cloud drive."]                     # both unstructured: a tie
        group = ScoredPrompt(prompt, answers, [judge.score(None, a, prompt) for a in answers])
        assert prefill_tied([group], judge, lambda messages: [[refusal] for _ in messages]) == 1
        pairs, _ = pairs_from_scores([group])
        assert len(pairs) == pairs_made
        if pairs:
            assert pairs[0].rejected == refusal and pairs[0].chosen == "Copy the files."


def test_the_refusal_recipe_config_parses():
    root = Path(__file__).resolve().parents[1]
    cfg = parse_config(["--config", str(root / "configs/smollm2_refusal.yaml")], IterateConfig)
    assert (cfg.judge, cfg.prefill, cfg.refusal_worst, cfg.reference) == ("rule", PREFIX, False, "previous")
    assert parse_config(["--config", str(root / "configs/smollm2_refusal.yaml"), "--refusal_worst", "true"],
                        IterateConfig).refusal_worst


def test_axes_keeps_the_prompts_of_the_named_axes_and_names_a_missing_one(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": "b", "axis": axis,
                                        "lang": "en"}) + "\n"
                            for i, axis in enumerate(["refusal", "language", "structure", "language"])))
    records = read_heldout(str(data))
    kept = of_axes(records, IterateConfig(data=str(data), axes="refusal, structure"))
    assert [r.axis for r in kept] == ["refusal", "structure"]
    assert of_axes(records, IterateConfig(data=str(data))) == records
    with pytest.raises(ConfigError, match=r"--axes refusal,fact: .*d.jsonl has no record of axis fact \(its axes: "
                                          r"language, refusal, structure\)"):
        of_axes(records, IterateConfig(data=str(data), axes="refusal,fact"))
