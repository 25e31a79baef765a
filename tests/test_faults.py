"""Faults injected into real runs (tiny Llama, CPU, fp32): SIGKILL at a step and inside a save, SIGTERM and
Ctrl-C, NaN losses, a failed save, changed settings on resume, a dead and a frozen rank, two "nodes" on
loopback. Every interrupted run, once resumed, must equal the uninterrupted one."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from minidpo.config import RunConfig
from minidpo.errors import ConfigError
from minidpo.fault_injection import plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subprocesses run the test's own interpreter path (torchrun as `python -m torch.distributed.run`): DeepSpeed
# JIT-builds its CPU op keyed on the include paths, and another path would rebuild it in the shared cache.
PYTHON = sys.executable
pytestmark = pytest.mark.slow

# the uninterrupted run every faulty one is compared with: 6 steps of 4 pairs, a checkpoint every 2
COMMON = dict(deepspeed=f"{ROOT}/ds_configs/zero2.json", dtype="fp32", learning_rate=1e-3, weight_decay=0.1,
              batch_size=4, max_steps=6, log_interval=1, save_interval=2, keep_checkpoints=3, max_length=64,
              max_prompt_length=32, beta=0.5)


def write_pairs(path, n=32, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            f.write(json.dumps({"prompt": f"What is {a} + {b}?", "chosen": f"{a} + {b} = {a + b}.",
                                "rejected": f"{a} + {b} = {a + b + rng.randint(1, 9)}. " * rng.randint(1, 3)}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl")


def train_here(model, data, output_dir, **over):
    """In this process (the test's process group of one)."""
    from minidpo.train import train

    return train(RunConfig(**{**COMMON, "model": model, "data": data, "output_dir": str(output_dir), **over}))


def cli_args(model, data, output_dir, **over) -> list[str]:
    args = []
    for key, value in {**COMMON, "model": model, "data": data, "output_dir": str(output_dir), **over}.items():
        args += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def env_with(fault: str | None = None, **extra) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MINIDPO_FAULT"):
        env.pop(key, None)
    env.update(extra)
    if fault:
        env["MINIDPO_FAULT"] = fault
    return env


def run_cli(cmd, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def trainer(*args) -> list[str]:
    return [PYTHON, "trainer/train_dpo.py", *args]


def metrics(output_dir) -> list[dict]:
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def latest(output_dir) -> str | None:
    path = os.path.join(output_dir, "checkpoints", "latest")
    return open(path).read().strip() if os.path.isfile(path) else None


def weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def tensorboard_steps(output_dir, tag="loss") -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(output_dir, "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def assert_same_run(done, reference, abs_tol=1e-6):
    """The curve (each step exactly once), the learning rates, the final weights and the totals."""
    rows, ref = metrics(done), metrics(reference)
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == list(range(1, 7))
    for key in ("loss", "rewards/margins", "grad_norm", "learning_rate"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in ref], abs=abs_tol, rel=1e-5), key
    a, b = weights(os.path.join(done, "export")), weights(os.path.join(reference, "export"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=abs_tol) for k in a)
    tb = tensorboard_steps(done)
    assert [s for s, _ in tb] == list(range(1, 7))  # the purged steps are not seen twice
    assert [v for _, v in tb] == pytest.approx([r["loss"] for r in ref], abs=abs_tol)
    summary, ref_summary = (json.load(open(os.path.join(d, "summary.json"))) for d in (done, reference))
    assert summary["trained"] == ref_summary["trained"]  # pairs and tokens: each step counted once


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_model_dir, pairs_file):
    out = tmp_path_factory.mktemp("reference") / "run"
    train_here(tiny_model_dir, pairs_file, out)
    return str(out)


def test_sigkill_at_a_step_and_inside_a_save_then_resume_equals_no_interruption(
        tmp_path, tiny_model_dir, pairs_file, reference_run, capsys):
    out = tmp_path / "killed"
    args = cli_args(tiny_model_dir, pairs_file, out)
    first = run_cli(trainer(*args), env_with("kill@step:3"))  # after step 3 is logged, before any save of it
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert latest(out) == "step_00000002" and [r["step"] for r in metrics(out)] == [1, 2, 3]

    second = run_cli(trainer(*args, "--resume", "true"), env_with("kill@save:4"))  # files written, not committed
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    assert latest(out) == "step_00000002"  # `latest` still names the complete checkpoint
    assert os.path.isdir(out / "checkpoints/step_00000004.partial/hf")  # its HF export inside, uncommitted too
    assert not os.path.exists(out / "checkpoints/step_00000004")
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]  # step 3 was dropped and written again

    capsys.readouterr()
    train_here(tiny_model_dir, pairs_file, out, resume=True)
    log = capsys.readouterr().out
    assert "removed" in log and "step_00000004.partial: an incomplete save" in log
    assert "resumed at step 2" in log
    assert not any(n.endswith(".partial") for n in os.listdir(out / "checkpoints"))
    assert_same_run(str(out), reference_run)


def test_sigterm_stops_at_the_step_boundary_with_a_checkpoint_and_resumes_exactly(
        tmp_path, tiny_model_dir, pairs_file, reference_run):
    out = tmp_path / "term"
    stopped = run_cli(trainer(*cli_args(tiny_model_dir, pairs_file, out)), env_with("term@step:3"))
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert "SIGTERM received: stopping after this optimizer step" in stopped.stderr
    assert "stopped at step 3/6" in stopped.stdout and "--resume true" in stopped.stdout
    assert latest(out) == "step_00000003" and [r["step"] for r in metrics(out)] == [1, 2, 3]
    assert not os.path.exists(out / "summary.json")  # not a finished run
    train_here(tiny_model_dir, pairs_file, out, resume=True)
    assert_same_run(str(out), reference_run)


def test_a_second_ctrl_c_aborts_at_once_without_a_checkpoint(tmp_path, tiny_model_dir, pairs_file):
    out = tmp_path / "int"
    aborted = run_cli(trainer(*cli_args(tiny_model_dir, pairs_file, out)), env_with("int2@step:2"))
    assert aborted.returncode == 130, aborted.stderr[-2000:]
    assert "second SIGINT: aborting now" in aborted.stderr
    assert latest(out) is None  # the step-2 save was not started


def free_port() -> int:
    """Other test runs on this machine use the usual ports: take one the kernel says is free."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(node_rank: int, nnodes: int, nproc: int, port: int) -> list[str]:
    return [PYTHON, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node_rank", str(node_rank), "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(port), "trainer/train_dpo.py"]


def test_two_nodes_on_loopback_train_like_one_node(tmp_path, tiny_model_dir, pairs_file, reference_run):
    """Two launcher invocations (node ranks 0 and 1, one process each) with 2 pairs per rank are the
    reference's one process with 4: same losses, gradient norms, accuracies."""
    out = tmp_path / "nodes"
    args = cli_args(tiny_model_dir, pairs_file, out, batch_size=2)
    port = free_port()
    nodes = [subprocess.Popen(_torchrun(n, 2, 1, port) + args, cwd=ROOT, env=env_with(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in (0, 1)]
    results = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    rows, ref = metrics(out), metrics(reference_run)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref], abs=1e-3)
    assert [r["grad_norm"] for r in rows] == pytest.approx([r["grad_norm"] for r in ref], rel=1e-3)
    assert [r["rewards/accuracies"] for r in rows] == pytest.approx([r["rewards/accuracies"] for r in ref])
    assert json.load(open(out / "summary.json"))["world_size"] == 2


def test_sigterm_to_one_of_two_ranks_stops_both_at_the_same_step(tmp_path, tiny_model_dir, pairs_file, reference_run):
    out = tmp_path / "term2"
    args = cli_args(tiny_model_dir, pairs_file, out, batch_size=2)
    done = run_cli(_torchrun(0, 1, 2, free_port()) + args, env_with("term@step:3:rank1"))  # only rank 1 is signalled
    assert done.returncode == 0, done.stderr[-3000:]
    assert latest(out) == "step_00000003"
    assert {"rng_rank0.pt", "rng_rank1.pt"} <= set(os.listdir(out / "checkpoints/step_00000003"))
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in metrics(reference_run)[:3]], abs=1e-3)


def _two_ranks_by_hand(args, port, fault_for_rank1, dist_timeout):
    """Two processes started like a launcher would (RANK, WORLD_SIZE, MASTER_*), without one: no launcher
    kills the survivor for us, so what it does on its own is what we see."""
    procs = []
    for rank in (0, 1):
        env = env_with(fault_for_rank1 if rank else None, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(trainer(*args, "--dist_timeout", str(dist_timeout)), cwd=ROOT, env=env,
                                      text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_a_dead_or_frozen_rank_makes_the_other_exit_with_a_clear_error_in_bounded_time(
        tmp_path, tiny_model_dir, pairs_file, fault):
    timeout = 8
    out = tmp_path / fault
    rank0, rank1 = _two_ranks_by_hand(cli_args(tiny_model_dir, pairs_file, out, batch_size=2, max_steps=100,
                                               save_interval=0), free_port(), f"{fault}@step:2", timeout)
    try:
        # rank 1 dies (SIGKILL) or freezes (SIGSTOP) right after step 2; wait for that moment
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if rank1.poll() is not None or (fault == "stop" and _is_stopped(rank1.pid)):
                break
            assert rank0.poll() is None, rank0.communicate()[1][-2000:]
            time.sleep(0.2)
        faulted = time.monotonic()
        _, err = rank0.communicate(timeout=timeout + 60)
        waited = time.monotonic() - faulted
    finally:
        rank1.kill()
        rank1.communicate()
    print(f"{fault}: the survivor exited {waited:.1f} s after rank 1's fault (--dist_timeout {timeout})")
    assert rank0.returncode == 4, err[-2000:]
    assert "error: rank 0 of 2: a collective operation failed, another rank probably died or hung" in err
    assert "Traceback" not in err.split("error: rank 0")[-1]
    assert waited < timeout + 45  # bounded: a killed peer is seen at once, a frozen one after --dist_timeout
    if fault == "stop":
        assert waited > timeout * 0.5


def _is_stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


def _tensors(obj, prefix=""):
    """Every tensor of a (nested) checkpoint dict, by path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def _checkpoint_tensors(folder) -> dict:
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith("_states.pt"):  # model, optimizer (and ZeRO partition) states
            out.update({f"{name}{k}": v for k, v in
                        _tensors(torch.load(os.path.join(folder, name), weights_only=False))})
    return out


@pytest.mark.parametrize("stage", [0, 2])
def test_a_nan_loss_skips_the_update_and_is_counted(tmp_path, tiny_model_dir, pairs_file, monkeypatch, capfd, stage):
    """ZeRO-0 fp32 (torch's AdamW: our own skip) and ZeRO-2 (DeepSpeed's overflow skip): the NaN step
    changes neither the weights nor the Adam state; it is counted; the run goes on with finite numbers."""
    cache = tmp_path / "ref_cache"
    monkeypatch.setattr("minidpo.reference.CACHE_DIR", str(cache))
    monkeypatch.setattr("minidpo.fault_injection.PLANNED", plan("nan@loss:3"))
    out = tmp_path / f"nan{stage}"
    summary = train_here(tiny_model_dir, pairs_file, out, deepspeed=f"{ROOT}/ds_configs/zero{stage}.json",
                         max_steps=4, save_interval=1, keep_checkpoints=5, precompute_ref=True)
    assert "reference log-probs" in capfd.readouterr().err  # the reference pass shows a progress bar
    assert summary["train/skipped_steps"] == 1
    assert json.load(open(out / "summary.json"))["train/skipped_steps"] == 1
    rows = metrics(out)
    assert [r["train/skipped_steps"] for r in rows] == [0, 0, 1, 1]
    assert "loss" not in rows[2] and "grad_norm" not in rows[2]  # a skipped step logs no NaN
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)
    before, after = (_checkpoint_tensors(out / f"checkpoints/step_0000000{s}") for s in (2, 3))
    assert before.keys() == after.keys() and len(before) > 10
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], changed  # weights, fp32 masters, Adam moments: all untouched
    assert [v for _, v in tensorboard_steps(out, "train/skipped_steps")] == [0, 0, 1, 1]
    last = weights(out / "export")
    assert all(torch.isfinite(t).all() for t in last.values())


def test_too_many_non_finite_steps_in_a_row_stop_the_run(tmp_path, tiny_model_dir, pairs_file, monkeypatch):
    from minidpo.errors import FaultError

    monkeypatch.setattr("minidpo.fault_injection.PLANNED", plan("nan@loss:2+"))
    with pytest.raises(FaultError) as e:
        train_here(tiny_model_dir, pairs_file, tmp_path / "nans", max_skipped_steps=2, save_interval=1)
    message = str(e.value)
    assert message.startswith("step 3: 2 optimizer steps in a row had a non-finite loss or gradient norm")
    assert "Likely causes" in message and "step_00000002" in message
    assert [r["train/skipped_steps"] for r in metrics(tmp_path / "nans")] == [0, 1]  # step 3 raised


def test_a_failed_save_names_the_path_and_keeps_the_previous_checkpoint(
        tmp_path, tiny_model_dir, pairs_file, monkeypatch, reference_run):
    from minidpo.errors import FaultError

    out = tmp_path / "full"
    # the disk fills up while step 4 is being written
    monkeypatch.setattr("minidpo.fault_injection.PLANNED", plan("enospc@save:4"))
    with pytest.raises(FaultError) as e:
        train_here(tiny_model_dir, pairs_file, out)
    message = str(e.value)
    assert f"cannot save the checkpoint to {out}/checkpoints/step_00000004.partial: No space left on device" in message
    assert f"the previous checkpoint {out}/checkpoints/step_00000002 is intact" in message
    assert latest(out) == "step_00000002"
    monkeypatch.setattr("minidpo.fault_injection.PLANNED", [])
    train_here(tiny_model_dir, pairs_file, out, resume=True)  # it loads, and continues exactly
    assert_same_run(str(out), reference_run)


def test_resuming_with_changed_settings_is_refused_unless_allowed(tmp_path, tiny_model_dir, pairs_file, reference_run):
    out = tmp_path / "changed"
    shutil.copytree(reference_run, out)  # finished: latest is step 6
    changed = tmp_path / "changed.jsonl"
    lines = open(pairs_file).readlines()
    changed.write_text("".join(lines[:-1]) + lines[-1].replace("What is", "What's"))
    with pytest.raises(ConfigError) as e:
        train_here(tiny_model_dir, str(changed), out, resume=True, batch_size=2)
    message = str(e.value)
    assert "\n" not in message and "step_00000006 was saved with other settings" in message
    assert "data content (" in message and "batch_size (4 -> 2)" in message
    assert message.endswith("pass --resume_allow_changes data,batch_size")
    # an intended change: two more steps
    with pytest.raises(ConfigError, match=r"max_steps \(6 -> 8\)"):
        train_here(tiny_model_dir, pairs_file, out, resume=True, max_steps=8)
    train_here(tiny_model_dir, pairs_file, out, resume=True, max_steps=8, resume_allow_changes="max_steps")
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["loss"] for r in rows[:6]] == [r["loss"] for r in metrics(reference_run)]


def test_a_pickle_only_model_folder_is_refused_unless_allowed(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from minidpo.models import load_causal_lm

    pickled = tmp_path / "pickled"  # transformers 5 only writes safetensors: make the old-style folder by hand
    shutil.copytree(tiny_model_dir, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict(), pickled / "pytorch_model.bin")
    assert os.path.isfile(pickled / "pytorch_model.bin") and not os.path.exists(pickled / "model.safetensors")
    with pytest.raises(ConfigError, match="pickle .*--allow_pickle_weights true"):
        load_causal_lm(str(pickled), trainable=False)
    model = load_causal_lm(str(pickled), trainable=False, allow_pickle=True)
    safe = load_causal_lm(tiny_model_dir, trainable=False)  # safetensors: no question asked
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, safe.model.layers[0].mlp.up_proj.weight)
    # one loading rule for every reader: eval and the app load through load_model
    from minidpo.models import load_model

    with pytest.raises(ConfigError, match="pickle .*--allow_pickle_weights true"):
        load_model(str(pickled), "SFT", device="cpu")
    lm = load_model(str(pickled), "SFT", device="cpu", allow_pickle=True)
    assert torch.equal(lm.model.model.layers[0].mlp.up_proj.weight, safe.model.layers[0].mlp.up_proj.weight)


def test_sft_resumes_through_the_same_checkpoints(tmp_path, tiny_model_dir, pairs_file):
    """SFT saves and resumes with DPO's code: killed after step 3, resumed from step 2, it ends at the
    uninterrupted run's weights; its fingerprint holds only SFT's settings."""
    sft = dict(deepspeed=f"{ROOT}/ds_configs/zero2.json", dtype="fp32", learning_rate=1e-3, batch_size=4, max_steps=6,
               log_interval=1, save_interval=2, max_length=64, max_prompt_length=32, warmup_steps=0)

    def sft_cmd(out, *extra):
        args = [f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sft.items()]
        return [PYTHON, "trainer/train_sft.py", "--model", tiny_model_dir, "--data", pairs_file,
                "--output_dir", str(out), *args, *extra]

    whole = run_cli(sft_cmd(tmp_path / "whole"), env_with())
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "killed"
    first = run_cli(sft_cmd(out), env_with("kill@step:3"))
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert latest(out) == "step_00000002"
    meta = json.load(open(out / "checkpoints/step_00000002/minidpo.json"))
    assert "batch_size" in meta["fingerprint"] and "beta" not in meta["fingerprint"]  # SFT has no DPO settings
    second = run_cli(sft_cmd(out, "--resume", "true"), env_with())
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed at step 2" in second.stdout
    a, b = weights(out / "export"), weights(tmp_path / "whole" / "export")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    changed = run_cli(sft_cmd(tmp_path / "whole", "--resume", "true", "--learning_rate", "0.5"), env_with())
    assert changed.returncode == 2 and "learning_rate (0.001 -> 0.5)" in changed.stderr.strip().splitlines()[-1]
