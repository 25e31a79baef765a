"""`make bench` (python -m minidpo.bench): minidpo vs TRL's DPOTrainer vs a MiniMind-style loop on one
generated workload — pairs/s, tokens/s, padding, peak RSS, MFU, and a numerics check."""
