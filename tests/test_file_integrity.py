"""Nothing lost inside one process, no record falsified (issue 27): every file fipa reads back is
checked where it is read, and every refusal is one line, a non-zero exit and no file altered.

Table-driven: one row per case of the issue; each row names the mutation, the command and the
words its one error line must hold.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from fipa import cli
from tests.helpers import tiny

BASE = tiny(rounds=2)  # 4 clients, a [8, 8] MLP: P = 97
ADAPTIVE = tiny(rounds=2, aggregator={"name": "fedadam", "server_lr": 0.01})
SCAFFOLD = tiny(rounds=2, client={"method": "scaffold"})


def run(*argv: str) -> int:
    return cli.main(list(argv))


def train(cfg: dict, out: Path, *extra: str) -> int:
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return run("train", "-c", str(path), "-o", str(out), "-q", "--threads", "1", *extra)


def one_error_line(capsys) -> str:
    """The single `fipa <cmd>: error:` line of a refused command (no traceback beside it)."""
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("fipa ")]
    assert len(lines) == 1 and not any("Traceback" in line for line in err), err
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (the run-directory lock's holder note aside) and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Finished 2-round runs (fipa/fedavg on BASE, fedadam, scaffold), a warm-up state of the BASE
    run and one of a same-size model of other layers ([32]: P = 97 too), a partition file."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, cfg in (("base", BASE), ("adaptive", ADAPTIVE), ("scaffold", SCAFFOLD),
                      ("other_arch", tiny(rounds=1, task={"hidden": [32]}))):
        out[name] = root / name
        assert train(cfg, out[name]) == 0
    for name in ("base", "other_arch"):
        out[f"warm_{name}"] = root / f"warm_{name}.pt"
        assert run("export-warmup", str(out[name]), "-o", str(out[f"warm_{name}"])) == 0
    cfg_path = root / "part.yaml"
    cfg_path.write_text(yaml.safe_dump(BASE))
    out["partition"] = root / "partition.json"
    assert run("partition", "-c", str(cfg_path), "-o", str(out["partition"])) == 0
    return out


# ----------------------------------------------------------------------------- checkpoints


def _set(key: str, value) -> Callable[[dict], None]:
    def mutate(raw: dict) -> None:
        raw[key] = value(raw) if callable(value) else value
    return mutate


def _drop_agg_state(raw: dict) -> None:
    raw["agg_state"] = {}


CHECKPOINT_CASES = [
    # (id, base run, mutation of the stored checkpoint dict, words of the error line)
    ("round_past_config", "base", _set("round", 1000), "past this config's rounds: 3"),
    ("negative_round", "base", _set("round", -1), "round is -1"),
    ("rows_past_round", "base", _set("round", 1), "rows reach round 2 but the checkpoint is at round 1"),
    ("garbage_rows", "base", _set("rows", "garbage"), "rows is not a non-empty list"),
    ("rows_not_increasing", "base", _set("rows", lambda r: r["rows"][::-1]), "not increasing from 0"),
    ("theta_shape", "base", _set("theta", lambda r: r["theta"][:-1]), "theta is torch.float64 [96]"),
    ("theta_float32", "base", _set("theta", lambda r: r["theta"].float()), "theta is torch.float32 [97]"),
    ("theta_list", "base", _set("theta", lambda r: r["theta"].tolist()), "theta is list"),
    ("adaptive_state_without_keys", "adaptive", _drop_agg_state, "agg_state does not match the run"),
    ("scaffold_state_wrong_shape", "scaffold", _set("method_state", lambda r: {"c": torch.zeros(3)}),
     "method_state does not match the run"),
    ("client_out_of_range", "base", _set("client_states", {"99": {}}), "client_states of clients ['99']"),
    ("diverged_flag_lies", "base", _set("diverged", True), "diverged flag disagrees"),
    ("unknown_key", "base", _set("extra", 1), "another fipa version"),
    ("uplink_negative", "base", _set("uplink_total", -5), "uplink_total is -5"),
    ("other_architecture", "base", _set("model", "0123456789abcdef"), "another model architecture"),
    ("nan_theta_not_diverged", "base", _set("theta", lambda r: r["theta"] * float("nan")),
     "theta holds NaN or inf, but the run is not marked diverged"),
    ("row_value_not_a_number", "base", lambda r: r["rows"][1].update(test_loss="0.1"), "or non-numbers"),
    ("row_without_a_metric", "base", lambda r: r["rows"][1].pop("test_mse"), "other keys than round 0's"),
    ("uplink_total_forged", "base", _set("uplink_total", 10**12), "disagrees with its last metrics row"),
]


@pytest.mark.parametrize(("case", "base", "mutate", "words"), CHECKPOINT_CASES,
                         ids=[c[0] for c in CHECKPOINT_CASES])
def test_a_bad_checkpoint_is_refused_and_nothing_changes(runs, tmp_path, capsys, case, base, mutate, words):
    out = tmp_path / "run"
    shutil.copytree(runs[base], out)
    raw = torch.load(out / "checkpoint.pt", weights_only=True)
    mutate(raw)
    torch.save(raw, out / "checkpoint.pt")
    cfg = {"base": BASE, "adaptive": ADAPTIVE, "scaffold": SCAFFOLD}[base]
    before = snapshot(out)
    assert train({**cfg, "rounds": 3}, out) == 2
    line = one_error_line(capsys)
    assert words in line and "checkpoint.pt" in line, line
    assert snapshot(out) == before


def test_lowering_rounds_of_a_finished_run_never_rewrites_its_record(runs, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(runs["base"], out)
    before = snapshot(out)
    assert train({**BASE, "rounds": 1}, out) == 2
    assert "past this config's rounds: 1" in one_error_line(capsys)
    assert snapshot(out) == before
    assert train({**BASE, "rounds": 1}, out, "--supersede") == 0  # the workflow's way: kept aside
    final = json.loads((out / "final.json").read_text())
    assert final["rounds_completed"] == 1 and final["config"]["rounds"] == 1
    kept = json.loads(next((out / "superseded").glob("*/final.json")).read_text())
    assert kept["rounds_completed"] == 2 and kept["config"]["rounds"] == 2


def test_a_valid_checkpoint_still_resumes_to_the_numbers_of_an_uninterrupted_run(runs, tmp_path):
    out, straight = tmp_path / "run", tmp_path / "straight"
    shutil.copytree(runs["adaptive"], out)
    assert train({**ADAPTIVE, "rounds": 3}, out) == 0
    assert train({**ADAPTIVE, "rounds": 3}, straight) == 0

    def numbers(d: Path) -> list[list[str]]:
        return [line.split(",")[:-1] for line in (d / "metrics.csv").read_text().splitlines()]  # no wall_s

    assert numbers(out) == numbers(straight)


# ----------------------------------------------------------------------------- partitions


def _indices(change: Callable[[list[list[int]]], list[list[int]]]) -> Callable[[dict], None]:
    def mutate(part: dict) -> None:
        part["indices"] = change(part["indices"])
    return mutate


def _move_first_client(parts: list[list[int]]) -> list[list[int]]:
    return [[], parts[0] + parts[1], *parts[2:]]


PARTITION_CASES = [
    ("other_seed", lambda p: p.update(seed=7), "was made for seed 7, this run has seed 0"),
    ("drops_a_sample", _indices(lambda ps: [ps[0][:-1], *ps[1:]]), "leaves 1 of the 64 samples to no client"),
    ("every_client_all_data", _indices(lambda ps: [sum(ps, [])] * len(ps)), "more than one client"),
    ("index_out_of_range", _indices(lambda ps: [[*ps[0], 64], *ps[1:]]), "outside [0, 64)"),
    ("negative_index", _indices(lambda ps: [[-1, *ps[0]], *ps[1:]]), "outside [0, 64)"),
    ("empty_client", _indices(_move_first_client), "gives client 0 no sample"),
    ("not_indices", _indices(lambda ps: "x"), "is not a partition file"),
    ("float_indices", _indices(lambda ps: [[float(i) for i in p] for p in ps]), "is not a partition file"),
    ("other_task_settings", lambda p: p["task"].update(hidden=[4]), "other task or partition settings"),
    ("other_client_count", _indices(lambda ps: ps[:3]), "holds 3 clients over 64 samples"),
]


@pytest.mark.parametrize(("case", "mutate", "words"), PARTITION_CASES, ids=[c[0] for c in PARTITION_CASES])
def test_a_bad_partition_file_is_refused_and_nothing_changes(runs, tmp_path, capsys, case, mutate, words):
    part = json.loads(runs["partition"].read_text())
    mutate(part)
    path = tmp_path / "partition.json"
    path.write_text(json.dumps(part))
    assert_input_refused("partition_file", path, words, tmp_path, capsys)


def assert_input_refused(key: str, path, words: str, tmp_path, capsys) -> None:
    """A run naming ``path`` under ``key`` exits 2 with one line naming the key and ``words``; the
    file is byte-identical afterwards and no run directory was made."""
    before = path.read_bytes()
    assert train({**BASE, key: str(path)}, tmp_path / "run") == 2
    line = one_error_line(capsys)
    assert words in line and key in line, line
    assert path.read_bytes() == before and not (tmp_path / "run").exists()


def test_the_partition_file_itself_still_trains(runs, tmp_path):
    assert train({**BASE, "partition_file": str(runs["partition"])}, tmp_path / "run") == 0


def test_a_scheme_that_leaves_samples_out_declares_it(monkeypatch):
    """``covers_all`` is declared on the scheme registry (default true): a file of a scheme
    registered with covers_all=False may leave samples to no client, one of a built-in may not."""
    from types import SimpleNamespace

    from fipa.partition import SCHEMES
    from fipa.partition_file import _part_indices

    monkeypatch.setattr(SCHEMES, "_entries", dict(SCHEMES._entries))
    SCHEMES.register("subset", covers_all=False)(lambda data, clients, rng, params: [])
    data = {"indices": [[0, 1], [2]]}
    of = lambda scheme: SimpleNamespace(partition=SimpleNamespace(name=scheme))  # noqa: E731
    assert _part_indices(data, of("subset"), 4) is None
    assert _part_indices(data, of("iid"), 4) == "leaves 1 of the 4 samples to no client"
    assert all(SCHEMES.get(name).covers_all for name in SCHEMES.names() if name != "subset")


# ----------------------------------------------------------------------------- warm-up states


WARMUP_CASES = [
    ("nan_theta", "warm_base", lambda w: w["theta"].__setitem__(0, float("nan")), "non-finite parameters"),
    ("list_theta", "warm_base", lambda w: w.update(theta=w["theta"].tolist()), "theta is list"),
    ("other_architecture_same_size", "warm_other_arch", lambda w: None, "another model architecture"),
    ("other_size", "warm_base", lambda w: w.update(theta=w["theta"][:-1]), "has 96 parameters, the model 97"),
    ("not_a_mapping", "warm_base", lambda w: w.clear(), "holds no parameter tensor"),
    ("float32_in_a_float64_run", "warm_base", lambda w: w.update(theta=w["theta"].float()),
     "holds torch.float32 parameters, the run trains in torch.float64"),
]


@pytest.mark.parametrize(("case", "source", "mutate", "words"), WARMUP_CASES,
                         ids=[c[0] for c in WARMUP_CASES])
def test_a_bad_warmup_state_is_refused_and_nothing_changes(runs, tmp_path, capsys, case, source, mutate,
                                                           words):
    warm = torch.load(runs[source], weights_only=True)
    mutate(warm)
    path = tmp_path / "state.pt"
    torch.save(warm, path)
    assert_input_refused("warmup_checkpoint", path, words, tmp_path, capsys)


def test_warmup_files_without_a_model_fingerprint_still_load(runs, tmp_path):
    warm = torch.load(runs["warm_base"], weights_only=True)
    assert warm["model"]  # written by this version
    del warm["model"]  # as export-warmup wrote them before
    torch.save(warm, tmp_path / "old.pt")
    assert train({**BASE, "warmup_checkpoint": str(tmp_path / "old.pt")}, tmp_path / "run") == 0


# ----------------------------------------------------------------------------- data loss


def test_export_warmup_never_overwrites_a_run_file(runs, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(runs["base"], out)
    before = snapshot(out)
    for target in (out / "checkpoint.pt", out / "final.json", out / "sub" / ".." / "metrics.csv"):
        assert run("export-warmup", str(out), "-o", str(target)) == 2
        assert "would overwrite it" in one_error_line(capsys)
    assert snapshot(out) == before
    assert run("export-warmup", str(out), "-o", str(out / "state.pt")) == 0  # any other name is fine


def test_two_cells_of_one_batch_into_one_directory_are_refused_before_any_work(tmp_path, capsys):
    s0, s1 = tmp_path / "s0.yaml", tmp_path / "s1.yaml"
    s0.write_text(yaml.safe_dump(tiny(rounds=1)))
    s1.write_text(yaml.safe_dump(tiny(rounds=1, seed=1)))
    same = tmp_path / "same"
    alias = tmp_path / "x" / ".." / "same"
    assert run("train-batch", "--cell", str(s0), str(same), "--cell", str(s1), str(alias), "-q") == 2
    assert "two cells of this batch write into one run directory" in one_error_line(capsys)
    assert not same.exists()


def _test_config() -> dict:
    return yaml.safe_load(Path(".test/config/config.yaml").read_text())


def test_cells_that_resolve_to_one_run_directory_are_refused_at_dag_build():
    """The issue's case: variant names "." make (".", fedavg) and (fedavg, ".") one directory."""
    from snakemake.utils import validate

    from fipa import grid
    from fipa.errors import ConfigError

    config = _test_config()
    config["client_methods"] = {".": {"method": "local"}, "fedavg": {"method": "local"}}
    config["aggregators"] = {".": {"name": "fedavg", "server_lr": 0.5}, "fedavg": {"name": "fedavg"}}
    config["tasks"]["regression_1d"]["warmup"]["client_method"] = "fedavg"
    where = r"\(results/runs/regression_1d/domain4/fedavg/seed0\)"
    with pytest.raises(ConfigError, match=f"resolve to one run directory {where}"):
        grid.check(config)  # common.smk calls it while the DAG is built
    for name in (".", ".."):
        config = _test_config()
        config["aggregators"][name] = {"name": "fedavg"}
        with pytest.raises(Exception, match="does not match"):
            validate(config, "workflow/schemas/config.schema.yaml")


def test_a_task_with_no_aggregator_is_refused_at_dag_build():
    from fipa import grid
    from fipa.errors import ConfigError

    for key in ("aggregators", "client_methods"):
        config = _test_config()
        config["tasks"]["regression_1d"][key] = []
        with pytest.raises(ConfigError, match=f"tasks.regression_1d.{key}: an empty list"):
            grid.check(config)


# ----------------------------------------------------------------------------- collect, figures, report


def _final_with(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def mutate(run_dir: Path) -> None:
        final = json.loads((run_dir / "final.json").read_text())
        change(final)
        (run_dir / "final.json").write_text(json.dumps(final))
    return mutate


COLLECT_CASES = [
    ("number_as_string", _final_with(lambda f: f.update(wall_s="1.5")), "wall_s is '1.5', not a number"),
    ("metric_as_string", _final_with(lambda f: f["final"].update(test_mse="0.1")), "final is"),
    ("seed_as_float", _final_with(lambda f: f.update(seed=0.5)), "seed is 0.5"),
    ("rounds_past_config", _final_with(lambda f: f.update(rounds_completed=3)),
     "records rounds_completed 3 for a config of 2 rounds"),
    ("not_an_object", lambda d: (d / "final.json").write_text("[1, 2]"), "is not a JSON object"),
]


@pytest.mark.parametrize(("case", "mutate", "words"), COLLECT_CASES, ids=[c[0] for c in COLLECT_CASES])
def test_collect_refuses_a_final_json_that_lies(runs, tmp_path, capsys, case, mutate, words):
    out = tmp_path / "runs" / "a"
    shutil.copytree(runs["base"], out)
    mutate(out)
    before = snapshot(tmp_path)
    assert run("collect", str(tmp_path / "runs"), "-o", str(tmp_path / "summary.csv")) == 2
    line = one_error_line(capsys)
    assert words in line and "final.json" in line, line
    assert snapshot(tmp_path) == before  # no summary written, nothing changed


FIGURES_CASES = [
    ("empty_file", "", "not a summary table"),
    ("header_only", "task,partition,client_method,aggregator,seed,primary_metric,diverged,run_dir\n",
     "holds no runs"),
    ("other_table", "a,b\n1,2\n", "lacks the columns"),
]


@pytest.mark.parametrize(("case", "text", "words"), FIGURES_CASES, ids=[c[0] for c in FIGURES_CASES])
def test_figures_refuses_a_summary_without_runs(tmp_path, capsys, case, text, words):
    (tmp_path / "summary.csv").write_text(text)
    before = snapshot(tmp_path)
    assert run("figures", "--summary", str(tmp_path / "summary.csv"), "-o", str(tmp_path / "figs")) == 2
    assert words in one_error_line(capsys)
    assert snapshot(tmp_path) == before and not (tmp_path / "figs").exists()


def test_figures_refuses_a_metrics_csv_that_is_not_numbers(runs, tmp_path, capsys):
    out = tmp_path / "runs" / "a"
    shutil.copytree(runs["base"], out)
    assert run("collect", str(tmp_path / "runs"), "-o", str(tmp_path / "summary.csv")) == 0
    (out / "metrics.csv").write_text("round,train_loss\n0,abc\n")
    assert run("figures", "--summary", str(tmp_path / "summary.csv"), "-o", str(tmp_path / "figs")) == 2
    assert "metrics.csv: not a metrics table" in one_error_line(capsys)


def test_report_on_an_empty_results_directory_is_one_line(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    assert run("report", "--results", str(tmp_path / "results"), "-o", str(tmp_path / "r.ipynb"),
               "--html", str(tmp_path / "r.html")) == 2
    assert "summary.csv: no summary table" in one_error_line(capsys)
    assert sorted(os.listdir(tmp_path)) == ["results"]


# ----------------------------------------------------------------------------- the last tracebacks


def _plugin_exit(tmp_path: Path) -> dict:
    (tmp_path / "quits.py").write_text("import sys\nsys.exit(0)\n")
    return tiny(rounds=1, plugins=[str(tmp_path / "quits.py")])


def _symlink_loop(tmp_path: Path) -> Path:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    return tmp_path / "loop"


TRAIN_CASES = [
    # (id, config from tmp_path, output from tmp_path, words of the error line)
    ("plugin_calls_sys_exit", _plugin_exit, None, "called sys.exit(0) while importing"),
    ("negative_noise", lambda p: tiny(task={"noise": -1}), None, "task.noise"),
    ("model_larger_than_memory", lambda p: tiny(task={"hidden": [200000, 200000]}), None,
     "task: the model has 40,000,800,001 parameters"),
    ("output_is_a_symlink_loop", lambda p: tiny(rounds=1), _symlink_loop, "leads nowhere (or to itself)"),
    ("output_under_a_symlink_loop", lambda p: tiny(rounds=1), lambda p: _symlink_loop(p) / "run",
     "leads nowhere (or to itself)"),
]


@pytest.mark.parametrize(("case", "config", "output", "words"), TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses_with_one_line(tmp_path, capsys, case, config, output, words):
    cfg = config(tmp_path)
    out = output(tmp_path) if output else tmp_path / "run"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    before = snapshot(tmp_path)
    assert run("train", "-c", str(path), "-o", str(out), "-q", "--threads", "1") == 2
    assert words in one_error_line(capsys)
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()
