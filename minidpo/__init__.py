"""minidpo: Direct Preference Optimization on DeepSpeed ZeRO, readable top to bottom.

Entry points (trainer/, app/, `minidpo`, `python -m minidpo.*`) set the offline environment
(minidpo.errors.set_offline_environment); importing the library changes nothing.
"""

__version__ = "0.1.0"
