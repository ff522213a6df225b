"""The GPU pool: concurrent jobs never share a GPU; a killed job's lock is freed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from fipa import devices
from fipa.config import ConfigError

HOLDER = textwrap.dedent("""
    import json, sys, time
    from fipa import devices
    with devices.gpu_slot(devices.visible_gpus(), poll_s=0.02) as gpu:
        print("locked", flush=True)
        t0 = time.time()
        time.sleep(float(sys.argv[1]))
        print(json.dumps({"gpu": gpu, "start": t0, "end": time.time()}), flush=True)
""")


@pytest.fixture
def fake_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv(devices.GPUS_ENV, "0,1")
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path / "locks"))
    return dict(os.environ)


def holder(env, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(seconds)], env=env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)


def test_four_concurrent_jobs_on_two_gpus_never_share_one(fake_gpus):
    procs = [holder(fake_gpus, 1.0) for _ in range(4)]
    spans = [json.loads(p.communicate(timeout=60)[0].split("\n", 1)[1]) for p in procs]
    assert {s["gpu"] for s in spans} == {0, 1}
    for gpu in (0, 1):
        mine = sorted((s["start"], s["end"]) for s in spans if s["gpu"] == gpu)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(mine, mine[1:], strict=False))
    # two at a time: the four 1-s jobs need about two slots of 1 s, not one of 1 s
    assert max(s["end"] for s in spans) - min(s["start"] for s in spans) >= 1.9


def test_killed_job_frees_its_gpu(fake_gpus):
    blockers = [holder(fake_gpus, 60) for _ in range(2)]
    for b in blockers:  # wait until both GPUs are held
        assert b.stdout.readline().strip() == "locked"
    with pytest.raises(TimeoutError), devices.gpu_slot([0, 1], poll_s=0.02, timeout_s=0.3):
        pass
    os.killpg(blockers[0].pid, signal.SIGKILL)
    blockers[0].wait()
    with devices.gpu_slot([0, 1], poll_s=0.02, timeout_s=10) as gpu:
        assert gpu in (0, 1)
    os.killpg(blockers[1].pid, signal.SIGKILL)
    blockers[1].wait()


def test_cpu_and_missing_cuda(monkeypatch):
    with devices.claim("cpu") as d:
        assert d == torch.device("cpu")
    monkeypatch.setenv(devices.GPUS_ENV, "")
    with devices.claim("auto") as d:
        assert d == torch.device("cpu")
    with pytest.raises(ConfigError, match="device: 'cuda' requested"), devices.claim("cuda"):
        pass
