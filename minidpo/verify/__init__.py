"""IFEval's 25 verifiable instructions (Zhou et al. 2023, arXiv 2311.07911), checked on plain strings.

    check(instruction_id, kwargs, response) -> bool          strict verdict
    check_loose(instruction_id, kwargs, response) -> bool    loose verdict (first/last line, `*` removed)
    read_ifeval(path) -> list[IFEvalRecord]                  IFEval's input format, checked line by line
    score_prompt(record, response) -> PromptResult           per-instruction strict and loose verdicts
    aggregate(results) -> dict                               the four figures and accuracy per kind

The command line: `python -m minidpo.verify INPUT.jsonl ANSWERS.jsonl [--details OUT.jsonl]`; training
prompts of our own: `python -m minidpo.verify.prompts`. Standard library only, plus `langdetect` for the
three checks that look at the language.
"""

from minidpo.verify.records import Answer, IFEvalRecord, match_answers, parse_record, read_answers, read_ifeval
from minidpo.verify.registry import INSTRUCTIONS, check, check_loose, loose_variants, parse_kwargs, verdict
from minidpo.verify.scoring import PromptResult, aggregate, score, score_prompt
from minidpo.verify.text import capital_words, count_sentences, count_words

__all__ = [
    "INSTRUCTIONS", "Answer", "IFEvalRecord", "PromptResult", "aggregate", "capital_words", "check", "check_loose",
    "count_sentences", "count_words", "loose_variants", "match_answers", "parse_kwargs", "parse_record",
    "read_answers", "read_ifeval", "score", "score_prompt", "verdict",
]
