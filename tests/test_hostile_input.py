"""Nothing lost, nothing bad accepted: what a hostile or careless user does to `fipa train`
(one test per finding of the hardening issue; numbers refer to its list)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest
import torch
import yaml

from fipa import cli
from fipa.io import atomic_write, remove_stale_temps
from tests.helpers import tiny


def write(tmp_path, cfg: dict, name: str = "run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_cli(*args: str) -> int:
    return cli.main(["train", *args, "-q", "--threads", "1"])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("fipa ")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    return errors[0]


# ----------------------------------------------------------------------------- 1, 2: data loss


def test_1_second_process_on_a_busy_run_directory_is_refused(tmp_path):
    cfg = write(tmp_path, tiny(rounds=400, client={"local_epochs": 4}, task={"n_train": 256}))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fipa.cli", "train", "-c", str(cfg), "-o", str(out), "-q", "--threads", "1"]
    first = subprocess.Popen(cmd)
    deadline = time.time() + 60
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(cmd, capture_output=True, text=True, check=False)
    first.kill()
    first.wait()
    assert second.returncode == 2
    assert str(out.resolve()) in second.stderr and "another run is training" in second.stderr
    assert f"pid {first.pid}" in second.stderr  # names the holder
    assert "Traceback" not in second.stderr


def test_2_finished_run_without_checkpoint_is_superseded_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli("-c", str(write(tmp_path, tiny(rounds=2))), "-o", str(out)) == 0
    first = json.loads((out / "final.json").read_text())
    (out / "checkpoint.pt").unlink()
    other = write(tmp_path, tiny(rounds=2, seed=1), "other.yaml")
    assert train_cli("-c", str(other), "-o", str(out)) == 2  # refused without --supersede
    assert "without its checkpoint" in one_error_line(capsys)
    assert train_cli("-c", str(other), "-o", str(out), "--supersede") == 0
    kept = list((out / "superseded").glob("*/final.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == first
    assert json.loads((out / "final.json").read_text())["seed"] == 1


# ----------------------------------------------------------------------------- 4, 5: divergence


def test_4_diverging_fipa_with_local_curvature_ends_diverged(tmp_path):
    cfg = tiny(rounds=3, client={"optimizer": "sgd", "lr": 1e6},
               aggregator={"name": "fipa", "rho": 1e-3, "rank": 4, "curvature_at": "local"})
    out = tmp_path / "run"
    assert train_cli("-c", str(write(tmp_path, cfg)), "-o", str(out)) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["diverged"] is True and final["final"] == {}


def test_5_finite_blow_up_is_divergence_and_has_no_final_metric(tmp_path):
    # server_lr 50 on FedAvg: the loss grows by orders of magnitude but stays finite
    cfg = tiny(rounds=6, aggregator={"name": "fedavg", "server_lr": 50.0}, divergence_factor=100.0)
    out = tmp_path / "run"
    assert train_cli("-c", str(write(tmp_path, cfg)), "-o", str(out)) == 0
    final = json.loads((out / "final.json").read_text())
    rows = [line.split(",") for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert final["diverged"] is True and final["final"] == {}
    assert float(rows[-1][1]) > 100.0 * float(rows[0][1])  # the row that tripped it is kept
    assert all(map(torch.isfinite, torch.tensor([float(r[1]) for r in rows])))


# ----------------------------------------------------------------------------- 6: output checked first


def test_6_output_that_is_a_file_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("not a directory")
    assert train_cli("-c", str(write(tmp_path, tiny(rounds=1))), "-o", str(blocker)) == 2
    assert "is a file" in one_error_line(capsys) and blocker.read_text() == "not a directory"


def test_6_log_that_is_a_directory_is_one_line(tmp_path, capsys):
    cfg = write(tmp_path, tiny(rounds=1))
    assert train_cli("-c", str(cfg), "-o", str(tmp_path / "run"), "--log", str(tmp_path)) == 2
    assert "--log" in one_error_line(capsys)


# ----------------------------------------------------------------------------- 8: values


@pytest.mark.parametrize(("over", "key"), [
    ({"client": {"lr": float("nan")}}, "client.lr"),
    ({"aggregator": {"name": "fipa", "rho": float("inf")}}, "aggregator.rho"),
    ({"seed": -1}, "seed"), ({"seed": 2**64}, "seed"),
    ({"client": {"momentum": -0.5}}, "client.momentum"),
    ({"client": {"weight_decay": -1.0}}, "client.weight_decay"),
    ({"device": "cudax"}, "device"),
    ({"task": {"hidden": [2**40]}}, "task.hidden"),
    ({"client": {"method": {"a": 1}}}, "client.method"),
])
def test_8_values_that_pass_range_checks_are_refused(tmp_path, capsys, over, key):
    assert train_cli("-c", str(write(tmp_path, tiny(**over))), "-o", str(tmp_path / "run")) == 2
    assert key in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_8_duplicate_yaml_keys_are_refused(tmp_path, capsys):
    text = yaml.safe_dump(tiny(rounds=1)) + "rounds: 3\n"
    (tmp_path / "dup.yaml").write_text(text)
    assert train_cli("-c", str(tmp_path / "dup.yaml"), "-o", str(tmp_path / "run")) == 2
    assert "rounds: given twice" in one_error_line(capsys)


def test_8_negative_thread_count_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "-c", str(write(tmp_path, tiny())), "-o", str(tmp_path / "r"), "--threads", "-1"])
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 10, 11: logs and files


def test_10_failed_cell_reason_is_in_its_log(tmp_path):
    bad = tiny(rounds=1, aggregator={"name": "fipa", "rho": -1.0})
    cells = [{"spec": bad, "output": str(tmp_path / "bad"), "log": str(tmp_path / "bad.log")},
             {"spec": tiny(rounds=1), "output": str(tmp_path / "good")}]
    assert cli.main(["train-batch", "--cells", json.dumps(cells), "-q", "--threads", "1"]) == 2
    assert "aggregator.rho" in (tmp_path / "bad.log").read_text()
    assert (tmp_path / "good" / "final.json").is_file()


def test_11_written_files_follow_the_umask_and_stale_temps_go(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "summary.csv", lambda fh: fh.write("a\n"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "summary.csv").stat().st_mode) == 0o644
    (tmp_path / ".metrics.csv.abc123.partial").write_text("half")
    assert remove_stale_temps(tmp_path) == 1 and (tmp_path / "summary.csv").exists()


# ----------------------------------------------------------------------------- 13: interface


def test_13_list_names_every_registry(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("resnet18", "digits_cnn", "allen_cahn", "burgers_smooth", "multiscale_sine", "dirichlet",
                 "fedrcl", "adam"):
        assert name in out


def test_13_end_of_run_line_is_readable(tmp_path, capsys):
    assert cli.main(["train", "-c", str(write(tmp_path, tiny(rounds=1))), "-o", str(tmp_path / "r"),
                     "--threads", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "done: 1 rounds" in last and "test_mse" in last and "{" not in last


def test_14_progress_bar_only_at_a_terminal_outside_ci(tmp_path):
    from fipa.cli import wants_progress_bar
    from fipa.config import parse_run_config
    from fipa.simulate import train

    class Tty:
        def isatty(self):
            return True

    assert wants_progress_bar(Tty(), {}) and not wants_progress_bar(Tty(), {"CI": "true"})
    with open(os.devnull, "w") as log_file:  # a log file or pipe: plain lines
        assert not wants_progress_bar(log_file, {})
    seen = []
    train(parse_run_config(tiny(rounds=3)), tmp_path / "r", log=lambda s: None,
          on_round=lambda rnd, total: seen.append((rnd, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
