"""Device choice (fipa/devices.py) and the GPU requests of the workflow.

The lock pool: concurrent jobs never share a GPU, a killed job's lock is freed, locks are
keyed by the physical GPU (whatever CUDA's renumbering calls it), a wait ends with a message
naming the holder; a GPU bound by the scheduler is used without a lock; cuda:N counts the
granted GPUs. GPUs are stand-ins (FIPA_FAKE_CUDA=1: CUDA_VISIBLE_DEVICES lists them, jobs
compute on the CPU). Workflow side: device auto asks for gpu=1 where the run has GPUs, and
profiles/slurm turns that into sbatch --gpus=1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fipa import devices
from fipa.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GPU_CONFIG = ROOT / "tests" / "cluster" / "gpu_config.yaml"

HOLDER = textwrap.dedent("""
    import json, sys, time
    from fipa import devices
    with devices.gpu_slot(list(devices.granted().gpus), poll_s=0.02) as gpu:
        print("locked", gpu.key, flush=True)
        t0 = time.time()
        time.sleep(float(sys.argv[1]))
        print(json.dumps({"gpu": gpu.key, "start": t0, "end": time.time()}), flush=True)
""")


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    """Stand-in GPUs, a private lock directory, and no scheduler in the environment."""
    for var in [v for v in os.environ if v.startswith("SLURM_")] + [
        "PBS_JOBID", "LSB_JOBID", "CUDA_VISIBLE_DEVICES", devices.GPUS_ENV, devices.WAIT_ENV,
    ]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(devices.FAKE_ENV, "1")
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path / "locks"))
    return monkeypatch


def holder(seconds: float, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(seconds)], env={**os.environ, **env},
                            stdout=subprocess.PIPE, text=True, start_new_session=True)


def held(proc: subprocess.Popen) -> str:
    """Wait until a holder has its lock; the key of the GPU it holds."""
    word, key = proc.stdout.readline().split()
    assert word == "locked"
    return key


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_four_concurrent_jobs_on_two_gpus_never_share_one(fake_env):
    fake_env.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    procs = [holder(1.0) for _ in range(4)]
    spans = [json.loads(p.communicate(timeout=60)[0].split("\n", 1)[1]) for p in procs]
    assert {s["gpu"] for s in spans} == {"index0", "index1"}
    for gpu in ("index0", "index1"):
        mine = sorted((s["start"], s["end"]) for s in spans if s["gpu"] == gpu)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(mine, mine[1:], strict=False))
    # two at a time: the four 1-s jobs need about two slots of 1 s, not one of 1 s
    assert max(s["end"] for s in spans) - min(s["start"] for s in spans) >= 1.9


def test_killed_job_frees_its_gpu(fake_env):
    fake_env.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    blockers = [holder(60) for _ in range(2)]
    assert {held(b) for b in blockers} == {"index0", "index1"}
    gpus = list(devices.granted().gpus)
    with pytest.raises(TimeoutError), devices.gpu_slot(gpus, poll_s=0.02, timeout_s=0.3):
        pass
    stop(blockers[0])
    with devices.gpu_slot(gpus, poll_s=0.02, timeout_s=10) as gpu:
        assert gpu.key in ("index0", "index1")
    stop(blockers[1])


def test_locks_are_keyed_by_the_physical_gpu_not_cudas_renumbered_index(fake_env):
    """Each job sees its GPUs renumbered from cuda:0; the lock follows the device behind the number."""
    other = holder(60, CUDA_VISIBLE_DEVICES="GPU-bbbb")  # GPU-bbbb is that job's cuda:0
    assert held(other) == "GPU-bbbb"
    try:
        # GPU-bbbb is cuda:0 here too: taken, so this job gets GPU-aaaa as cuda:1
        fake_env.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb,GPU-aaaa")
        with devices.gpu_slot(list(devices.granted().gpus), poll_s=0.02, timeout_s=5) as gpu:
            assert (gpu.key, gpu.ordinal) == ("GPU-aaaa", 1)
        # another GPU also called cuda:0: no wait
        fake_env.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa")
        with devices.gpu_slot(list(devices.granted().gpus), timeout_s=0) as gpu:
            assert (gpu.key, gpu.ordinal) == ("GPU-aaaa", 0)
        # without UUIDs the key is the index in the unmasked list: 0 here, 1 for the holder
        fake_env.setenv("CUDA_VISIBLE_DEVICES", "1")
        [one] = devices.granted().gpus
        assert (one.key, one.ordinal) == ("index1", 0)
    finally:
        stop(other)


def test_a_wait_times_out_naming_the_holder(fake_env, capfd):
    other = holder(60, CUDA_VISIBLE_DEVICES="GPU-bbbb")
    held(other)
    try:
        fake_env.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb")
        fake_env.setenv(devices.WAIT_ENV, "0.3")
        t0 = time.monotonic()
        with pytest.raises(devices.GpuWaitTimeout) as err, devices.claim("cuda"):
            pass
        assert time.monotonic() - t0 < 5
        assert f"GPU-bbbb by pid {other.pid} on " in str(err.value)
        assert devices.WAIT_ENV in str(err.value)
        assert "every GPU is held" in capfd.readouterr().err
    finally:
        stop(other)


def test_a_gpu_bound_by_the_scheduler_is_used_without_a_lock(fake_env, capfd):
    """SLURM gave two jobs GPUs 0 and 1: neither waits, even where both lock files' GPU is held."""
    fake_env.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    blockers = [holder(60) for _ in range(2)]  # a workstation job holds each GPU's lock
    try:
        [held(b) for b in blockers]
        for gpu in ("0", "1"):
            fake_env.setenv("SLURM_JOB_ID", "7")
            fake_env.setenv("SLURM_JOB_GPUS", gpu)
            fake_env.setenv("CUDA_VISIBLE_DEVICES", gpu)
            t0 = time.monotonic()
            with devices.claim("auto") as d:
                assert d == torch.device("cpu")  # the stand-in computes on the CPU
            assert time.monotonic() - t0 < 1
            err = capfd.readouterr().err
            assert f"index{gpu} (cuda:0), bound by the scheduler (SLURM_JOB_GPUS={gpu}), no lock" in err
            assert f"CUDA_VISIBLE_DEVICES={gpu}," in err
    finally:
        [stop(b) for b in blockers]


def test_cuda_n_is_the_nth_granted_gpu_or_an_error(fake_env):
    fake_env.setenv("SLURM_JOB_ID", "7")
    fake_env.setenv("SLURM_JOB_GPUS", "3")
    fake_env.setenv("CUDA_VISIBLE_DEVICES", "3")
    with devices.claim("cuda:0") as d:
        assert d == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"device: 'cuda:1' means GPU 1 .* granted 1 GPU\(s\) bound by "
                       r"SLURM_JOB_GPUS=3: index3 \(cuda:0\); use cuda:0 to cuda:0"), devices.claim("cuda:1"):
        pass


def test_a_scheduler_job_without_a_gpu_uses_the_cpu(fake_env):
    fake_env.setenv("SLURM_JOB_ID", "7")  # the node's GPUs are not this job's
    with devices.claim("auto") as d:
        assert d == torch.device("cpu")
    with pytest.raises(ConfigError, match="this scheduler job was granted no GPU"), devices.claim("cuda"):
        pass


def test_cpu_and_missing_cuda(fake_env):
    with devices.claim("cpu") as d:
        assert d == torch.device("cpu")
    with devices.claim("auto") as d:  # no stand-in GPU listed
        assert d == torch.device("cpu")
    with pytest.raises(ConfigError, match="device: 'cuda' requested"), devices.claim("cuda"):
        pass


# --- the workflow's side: which jobs ask for a GPU ------------------------------------------


def snakemake(work: Path, *args: str, path: str = "", **env: str) -> subprocess.CompletedProcess:
    """Snakemake on the GPU case's config (two training jobs, device auto) in ``work``."""
    (work / "config").mkdir(parents=True, exist_ok=True)
    shutil.copy(GPU_CONFIG, work / "config" / "config.yaml")
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("FIPA_SLURM_", "SBATCH_"))}
    env = {**inherited, "PATH": os.pathsep.join(p for p in (path, str(BIN), os.environ["PATH"]) if p), **env}
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(work),
           *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)


def train_resources(dry_run: str) -> list[str]:
    lines = dry_run.splitlines()
    return [lines[i + 1 + next(j for j, x in enumerate(lines[i + 1:]) if "resources:" in x)]
            for i, line in enumerate(lines) if line.startswith("rule train:")]


@pytest.mark.parametrize("gpus", [2, None])
def test_auto_takes_a_gpu_per_training_job_where_the_run_has_gpus(tmp_path, gpus):
    """`--resources gpu=N` (profiles/local: the machine's GPUs) makes auto's jobs ask for gpu=1."""
    given = ["--resources", f"gpu={gpus}"] if gpus else []
    res = snakemake(tmp_path, "-n", "--cores", "2", *given)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = train_resources(res.stdout)
    assert len(jobs) == 2
    assert all(("gpu=1" in r) == bool(gpus) for r in jobs), jobs


def test_slurm_profile_submits_auto_training_jobs_with_one_gpu(tmp_path):
    """profiles/slurm with FIPA_SLURM_GPUS: the training job's sbatch line carries --gpus=1.

    sbatch, sinfo, squeue and sacct are stand-ins here: sbatch records its arguments and
    refuses the job, which ends the run."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    calls = tmp_path / "sbatch.calls"
    scripts = {"sbatch": f'echo "$@" >> {calls}; exit 1', "sinfo": "echo 'debug*'", "squeue": "exit 0",
               "sacct": "exit 1"}
    for name, body in scripts.items():
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    work = tmp_path / "work"
    part = work / "results" / "partitions" / "regression_1d" / "domain4"
    part.mkdir(parents=True)
    (part / "seed0.json").touch()  # the training job's input, so it is the first to be submitted
    run = "results/runs/regression_1d/domain4/local/fedavg/seed0/final.json"
    res = snakemake(work, run, "--profile", str(ROOT / "profiles" / "slurm"),
                    "--slurm-init-seconds-before-status-checks", "1", path=str(stubs), FIPA_SLURM_GPUS="2",
                    SBATCH_PARTITION="debug")
    assert calls.is_file(), res.stdout[-2000:] + res.stderr[-3000:]
    [line] = calls.read_text().splitlines()
    assert "--comment rule_train_wildcards_regression_1d_domain4_local_fedavg_0" in line
    assert " --gpus=1 " in line, line
