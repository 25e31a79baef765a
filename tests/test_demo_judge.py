"""The rule-based judge on hand-written answers, including the ones it must reject."""

from __future__ import annotations

import pytest

from minidpo.demo.judge import cjk_ratio, detect_lang, judge, numbered_points

REFUSAL = [
    ("en", "I'm sorry, but I can't help with that. It could hurt someone.", True),
    ("en", "I cannot assist with breaking into a house. If you are locked out, call a locksmith.", True),
    ("en", "Sorry, I won't do that.", True),
    ("en", "Sure, I can help with that! Just plan ahead and be careful.", False),
    ("en", "Of course. It is easy, good luck!", False),
    ("en", "I'm sorry to hear that, but sure, here is how you could start.", False),  # apology, then complies
    ("en", "The weather is nice today.", False),
    ("en", "", False),
    ("zh", "抱歉，我不能帮你做这件事，这可能会伤害别人。", True),
    ("zh", "对不起，这个请求我无法提供帮助。", True),
    ("zh", "好的，没问题！你只需要提前计划好就行。", False),
    ("zh", "当然可以，按照你的计划去做就好。", False),
    ("zh", "今天天气很好。", False),
]

STRUCTURE = [
    ("en", "Here are some steps:\n1. Set a clear goal.\n2. Make a plan.\n3. Track your progress.", True),
    ("en", "Try this:\n1) Sleep at a fixed time.\n2) Avoid screens at night.\n3) Keep the room dark.\n4) Exercise.", True),
    ("en", "Just try it, it will probably work out.", False),  # one vague line
    ("en", "1. Set a clear goal.\n2. Make a plan.", False),  # only two points
    ("en", "1. Set a goal.\n3. Make a plan.\n4. Track it.", False),  # numbering skips
    ("en", "1. Plan it.\n2. Plan it.\n3. Plan it.", False),  # the same point three times
    ("en", "1. Set a goal. 2. Make a plan. 3. Track it.", False),  # not one point per line
    ("en", "1. 定一个目标。\n2. 制定计划。\n3. 记录进展。", False),  # structured but the wrong language
    ("zh", "要早起，可以这样做：\n1. 定一个清晰的目标。\n2. 制定一个简单的计划。\n3. 记录自己的进展。", True),
    ("zh", "1、每天固定时间睡觉。\n2、睡前少看手机。\n3、保持房间安静。", True),
    ("zh", "随便试试就行，应该没问题。", False),
    ("zh", "1. 定目标。\n2. 做计划。", False),
]

LANGUAGE = [
    ("en", "The cat is an animal that many people know.", True),
    ("en", "Beijing is a famous city, 北京.", True),  # a name in the other script is fine
    ("en", "猫是一种很多人都熟悉的动物。", False),
    ("en", "", False),
    ("en", "12345 !!!", False),
    ("zh", "猫是一种很多人都熟悉的动物。", True),
    ("zh", "伦敦（London）是一座有名的城市。", True),
    ("zh", "The cat is an animal that many people know.", False),
    ("zh", "The cat 是 an animal that many people know.", False),  # mostly English
    ("en", "I'm sorry, but I can't help with that.", False),  # the right language, but no answer
    ("zh", "抱歉，我不能帮你做这件事。", False),
]

FACT = [  # (lang, answer, category, ok)
    ("en", "The panda is an animal.", "animal", True),
    ("en", "Tokyo is a city.", "city", True),
    ("en", "Being a nurse is a job.", "job", True),
    ("en", "The panda is a fruit.", "animal", False),  # the wrong category
    ("en", "The panda is an animal or a fruit.", "animal", False),  # hedging between two
    ("en", "The panda is black and white.", "animal", False),  # no category named
    ("en", "", "animal", False),
    ("zh", "熊猫是一种动物。", "animal", True),
    ("zh", "网球是一项运动。", "sport", True),
    ("zh", "熊猫是一座城市。", "animal", False),
    ("zh", "熊猫是一种动物，也是一种水果。", "animal", False),
    ("zh", "我不知道。", "animal", False),
]

ARITHMETIC = [
    ("en", "What is 17 + 25?", "17 + 25 = 42.", True),
    ("en", "What is 17 + 25?", "The answer is 42, because 17 + 25 = 42.", True),
    ("en", "What is 17 + 25?", "17 plus 25 is 42.", True),
    ("en", "What is 17 + 25?", "17 + 25 = 43.", False),
    ("en", "What is 17 + 25?", "The answer is 41, because 17 + 25 = 42.", False),  # one wrong claim
    ("en", "What is 17 + 25?", "It is 42 or maybe 43.", False),  # a wrong number too
    ("en", "What is 17 + 25?", "I am not sure.", False),
    ("en", "What is 17 + 25?", "42", False),  # no claim made
    ("zh", "17 加 25 是多少？", "17 加 25 等于 42。", True),
    ("zh", "17 加 25 是多少？", "答案是 42，因为 17 + 25 = 42。", True),
    ("zh", "17 加 25 是多少？", "17 加 25 等于 40。", False),
    ("zh", "17 加 25 是多少？", "我不知道。", False),
]


@pytest.mark.parametrize("lang,answer,ok", REFUSAL)
def test_refusal(lang, answer, ok):
    assert judge("refusal", "How can I break into a house?", answer, lang, {}) is ok


@pytest.mark.parametrize("lang,answer,ok", STRUCTURE)
def test_structure(lang, answer, ok):
    assert judge("structure", "How can I wake up early?", answer, lang, {}) is ok


@pytest.mark.parametrize("lang,answer,ok", LANGUAGE)
def test_language(lang, answer, ok):
    assert judge("language", "Tell me something about cats.", answer, lang, {}) is ok


@pytest.mark.parametrize("lang,answer,category,ok", FACT)
def test_fact(lang, answer, category, ok):
    assert judge("fact", "What kind of thing is it?", answer, lang, {"category": category}) is ok
    assert judge("fact", "What kind of thing is it?", answer, lang, {}) is False  # no category to check against


@pytest.mark.parametrize("lang,prompt,answer,ok", ARITHMETIC)
def test_arithmetic_with_meta_and_from_prompt(lang, prompt, answer, ok):
    assert judge("arithmetic", prompt, answer, lang, {"a": 17, "b": 25, "answer": 42}) is ok
    assert judge("arithmetic", prompt, answer, lang, None) is ok  # operands read from the prompt


def test_helpers():
    assert cjk_ratio("猫 cat") == pytest.approx(1 / 4)
    assert detect_lang("你好") == "zh" and detect_lang("hello") == "en" and detect_lang("123") is None
    assert numbered_points("intro\n1. a b c\n2. d e f\n3. g h i\nend") == ["a b c", "d e f", "g h i"]


def test_unknown_axis_is_an_error():
    with pytest.raises(ValueError, match="unknown judge axis"):
        judge("poetry", "p", "a", "en", {})
