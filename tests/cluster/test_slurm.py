"""The workflow on a real single-node SLURM (tests/cluster/run_slurm_test.sh), where possible.

The script needs root and SLURM's Debian packages (it installs them with apt-get when they
are missing); elsewhere, or with FIPA_SKIP_CLUSTER_TEST=1, this test is skipped with the
reason. It includes the GPU case: two device: auto training jobs on two stand-in GPUs. The
script stops the daemons it started; if it overruns, it is stopped (TERM, which runs its
tear-down) and `run_slurm_test.sh down` runs as a last resort.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("run_slurm_test.sh")
SKIPPED = 77  # the script's exit status when this machine cannot host the test
LIMIT_S = 720  # about 7 minutes on 2 busy cores (412 s measured), plus an apt-get install


def _why_not() -> str | None:
    """Why the cluster test cannot run here, or None."""
    if os.environ.get("FIPA_SKIP_CLUSTER_TEST"):
        return "FIPA_SKIP_CLUSTER_TEST is set"
    if sys.platform != "linux" or shutil.which("bash") is None:
        return "needs Linux with bash"
    if os.geteuid() != 0:
        return "needs root (starts munged, slurmctld and slurmd, writes /etc/slurm/slurm.conf)"
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    installed = all(shutil.which(x, path=path) for x in ("slurmctld", "slurmd", "sbatch", "munged"))
    if not installed and shutil.which("apt-get", path=path) is None:
        return "SLURM is not installed and there is no apt-get to install it"
    return None


def test_workflow_on_a_real_slurm_cluster():
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "FIPA_BIN": str(Path(sys.executable).parent)}
    proc = subprocess.Popen(["bash", str(SCRIPT)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the script's trap stops its runs and daemons
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, timeout=120,
                       check=False)
        pytest.fail(f"cluster test did not finish in {LIMIT_S} s:\n{out[-4000:]}")
    if proc.returncode == SKIPPED:
        pytest.skip(out.strip().splitlines()[-1] if out.strip() else "the machine cannot host SLURM")
    assert proc.returncode == 0, out[-6000:]
    assert "PASS: cluster test finished" in out, out[-3000:]
    print(out)  # the script's progress lines and timings: pytest -rP shows them
