"""`minidpo doctor`: before spending the GPU hours, on the user's own model and data (docs/health.md).

    minidpo doctor --model M --data D [--deepspeed cfg] [--nproc N] [--timing_steps 3] [training flags]

    report.py   the checks in order and the exit code: data (one pair as trained, `data inspect`'s
                summary, red flags), one batch, memory per rank, a few timed steps of the real loop
    forward.py  the shared-prompt forward and the fused LM head against the plain ones, on this model
    memory.py   model states (DeepSpeed's ZeRO estimators), reference, activations measured on a probe batch
"""

from minidpo.doctor.report import diagnose

__all__ = ["diagnose"]
