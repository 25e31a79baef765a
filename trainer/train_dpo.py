"""Entry point that `deepspeed`, `torchrun` or plain `python` launch: see `python trainer/train_dpo.py --help`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from minidpo.train import main  # noqa: E402

if __name__ == "__main__":
    main()
