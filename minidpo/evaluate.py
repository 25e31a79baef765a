"""`python -m minidpo.evaluate`: the old name of `python -m minidpo.eval`, kept for one release.

It judges with the demo's judge unless `--judge` says otherwise, as it always did; new code should call
`minidpo.eval` (which takes the judge as an argument and never imports the demo).
"""

from __future__ import annotations

from minidpo.eval import evaluate  # noqa: F401 - the old import path
from minidpo.models import trained_beta  # noqa: F401 - the old import path

DEMO_JUDGE = "minidpo.demo.judge:judge_heldout"


def main(argv=None) -> dict:
    from minidpo.eval.cli import main as eval_main

    return eval_main(argv, prog="python -m minidpo.evaluate", default_judge=DEMO_JUDGE)


if __name__ == "__main__":
    main()
