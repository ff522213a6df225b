"""`make resume` unlocks only when no other Snakemake works in the directory (fipa/guard.py)."""

from __future__ import annotations

import subprocess
import sys
import time

from fipa.guard import main, other_snakemakes


def test_a_running_snakemake_in_the_directory_blocks_the_unlock(tmp_path, capsys):
    assert main([str(tmp_path)]) == 0
    # a stand-in process whose command line names snakemake, working in tmp_path
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "snakemake", "--cores",
                             "1"], cwd=tmp_path)
    try:
        deadline = time.time() + 10
        while not other_snakemakes(tmp_path) and time.time() < deadline:
            time.sleep(0.05)
        assert [pid for pid, _ in other_snakemakes(tmp_path)] == [fake.pid]
        assert main([str(tmp_path)]) == 1
        assert f"pid {fake.pid}" in capsys.readouterr().err
        assert other_snakemakes(tmp_path / "..") == []  # another directory is not blocked
    finally:
        fake.kill()
        fake.wait()
    assert main([str(tmp_path)]) == 0
