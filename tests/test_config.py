"""Bad input fails before training with one message naming the key and the fix."""

from __future__ import annotations

import pytest
import yaml

from fipa.cli import main
from fipa.config import ConfigError, parse_run_config
from fipa.simulate import Simulation
from tests.helpers import tiny


def build(cfg):
    return Simulation.build(parse_run_config(cfg))


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        (tiny(aggregator={"name": "fedmagic"}), "aggregator.name: unknown aggregator 'fedmagic'"),
        (tiny(task={"name": "chess"}), "task.name: unknown task 'chess'"),
        (tiny(partition={"scheme": "stripes"}), "partition.scheme: unknown partition scheme 'stripes'"),
        (tiny(client={"method": "fedmagic"}), "client.method: unknown client method"),
        (tiny(aggregator={"rho": -1e-3}), "aggregator.rho: must be >= 0"),
        (tiny(aggregator={"rank": 0}), "aggregator.rank: must be >= 1"),
        (tiny(participation=0.0), "participation: must lie in (0, 1]"),
        (tiny(participation=1.5), "participation: must lie in (0, 1]"),
        (tiny(aggregator={"rhoo": 1e-3}), "aggregator.rhoo: unknown key; valid keys here:"),
        (tiny(optimiser="adam"), "optimiser: unknown top-level key"),
        (tiny(task={"target": "nope"}), "task.target: unknown target 'nope'"),
        (tiny(client={"lr": "fast"}), "client.lr: expected a number"),
        (tiny(dtype="float16"), "dtype: 'float16' is not one of"),
    ],
)
def test_bad_key_is_named(cfg, needle):
    with pytest.raises(ConfigError) as err:
        build(cfg)
    assert needle in str(err.value)


@pytest.mark.parametrize("key", ["task", "partition", "client", "aggregator", "rounds"])
def test_missing_top_level_key_is_named(key):
    cfg = tiny()
    del cfg[key]
    with pytest.raises(ConfigError, match=f"^{key}: missing required key"):
        parse_run_config(cfg)


def test_missing_clients_key_is_named():
    cfg = tiny()
    del cfg["partition"]["clients"]
    with pytest.raises(ConfigError, match=r"^partition.clients: missing required key"):
        parse_run_config(cfg)


def test_more_clients_than_samples():
    with pytest.raises(ConfigError, match="partition.clients: 100 clients but only 64 training samples"):
        build(tiny(partition={"clients": 100}))


def test_yaml_strings_like_1e_3_are_numbers():
    # PyYAML reads 1e-3 (no dot) as a string; the config coerces it.
    raw = yaml.safe_load("rho: 1e-3")
    assert raw["rho"] == "1e-3"
    cfg = parse_run_config(tiny(aggregator={"rho": raw["rho"]}))
    assert cfg.aggregator.params.rho == pytest.approx(1e-3)


def run_cli(tmp_path, cfg, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    code = main(["train", "-c", str(path), "-o", str(out), "-q"])
    return code, out, capsys.readouterr().err


def test_cli_reports_one_line_and_writes_nothing(tmp_path, capsys):
    code, out, err = run_cli(tmp_path, tiny(aggregator={"rho": -1.0}), capsys)
    assert code == 2
    assert err.count("\n") == 1 and "aggregator.rho" in err
    assert not out.exists()


def test_truncated_checkpoint_is_named_and_kept(tmp_path, capsys):
    code, out, _ = run_cli(tmp_path, tiny(), capsys)
    assert code == 0
    ckpt = out / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    metrics_before = (out / "metrics.csv").read_bytes()
    code, out, err = run_cli(tmp_path, tiny(rounds=6), capsys)
    assert code == 2
    assert str(ckpt) in err and "corrupt or truncated" in err and "delete it" in err
    # nothing already written is lost
    assert ckpt.read_bytes() == data[: len(data) // 2]
    assert (out / "metrics.csv").read_bytes() == metrics_before


def test_checkpoint_of_another_config_is_refused(tmp_path, capsys):
    assert run_cli(tmp_path, tiny(), capsys)[0] == 0
    code, _, err = run_cli(tmp_path, tiny(aggregator={"rho": 0.5}), capsys)
    assert code == 2 and "different config" in err


def test_changed_spec_supersedes_the_old_run_and_keeps_it(tmp_path, capsys):
    """The workflow's path: config inline with --spec; a changed config starts afresh and the
    earlier run's files move to superseded/ byte for byte."""
    import json

    out = tmp_path / "out"
    assert main(["train", "--spec", json.dumps(tiny()), "-o", str(out), "-q"]) == 0
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    written = yaml.safe_load((out / "run.yaml").read_text())["aggregator"]  # resolved: defaults filled
    assert tiny()["aggregator"].items() <= written.items()
    assert main(["train", "--spec", json.dumps(tiny(aggregator={"rho": 0.5})), "-o", str(out),
                 "-q", "--supersede"]) == 0
    (kept,) = (out / "superseded").iterdir()
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == old
    assert yaml.safe_load((out / "run.yaml").read_text())["aggregator"]["rho"] == 0.5
    assert json.loads((out / "final.json").read_text())["rounds_completed"] == tiny()["rounds"]
    capsys.readouterr()


def test_bad_inline_spec_is_one_line(tmp_path, capsys):
    code = main(["train", "--spec", "{task: [", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--spec: not valid YAML" in err


def test_missing_config_file(tmp_path, capsys):
    code = main(["train", "-c", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "o")])
    assert code == 2 and "config file not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "configfile", ["config/config.yaml", "config/paper.yaml", ".test/config/config.yaml"]
)
def test_every_cell_of_shipped_configs_is_a_valid_run(configfile, tmp_path):
    """Each training and warm-up job of a shipped config passes `fipa train`'s key checks,
    so a typo in paper.yaml fails here, not hours into a cluster run."""
    from pathlib import Path

    from snakemake.utils import validate

    from tests.helpers import parse_every_cell

    config = yaml.safe_load(Path(configfile).read_text())
    validate(config, "workflow/schemas/config.schema.yaml")  # fills the schema's defaults
    assert parse_every_cell(config, tmp_path, configfile)
