"""minidpo: Direct Preference Optimization on DeepSpeed ZeRO, readable top to bottom."""

import os

# Nothing in minidpo may reach a model hub at run time; make that the default for every entry point.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

__version__ = "0.1.0"
