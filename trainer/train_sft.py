"""Entry point for the demo's SFT stage (`make sft`): see `python trainer/train_sft.py --help`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too

from minidpo.sft import main  # noqa: E402

if __name__ == "__main__":
    main()
