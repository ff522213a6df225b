"""config/ablations.yaml (`make ablations`): it validates, its knobs are read back from the runs'
resolved configs, and its figures draw FIPA against each knob with FedAvg as the reference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.colors import to_hex

from fipa import grid, palette, report
from fipa.config import parse_run_config
from fipa.report import draw, knob_plots, plots
from tests.helpers import parse_every_cell

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ROOT / "config" / "ablations.yaml"


def load(configfile: Path) -> dict:
    from snakemake.utils import validate

    config = yaml.safe_load(configfile.read_text())
    validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))  # fills defaults
    return config


def write_run(root: Path, cell: grid.GridCell, resolved: dict, value: float, diverged: bool = False,
              metric: str = "test_mse") -> None:
    """A run directory with the final.json fields the summary reads; ``resolved`` is the config."""
    d = root / cell.run_id
    d.mkdir(parents=True)
    final = {"task": cell.task, "partition": cell.partition, "client_method": cell.method,
             "aggregator": cell.aggregator, "seed": cell.seed, "task_family": resolved["task"]["name"],
             "rounds_completed": resolved["rounds"], "diverged": diverged, "primary_metric": metric,
             "final": {metric: math.nan if diverged else value}, "best": {metric: value},
             "uplink_bytes_total": 1, "wall_s": 1.0, "num_params": 1153, "config": resolved}
    (d / "final.json").write_text(json.dumps(final))
    pd.DataFrame({"round": [0, resolved["rounds"]], "train_loss": [1.0, value], "test_loss": [1.0, value],
                  metric: [1.0, value], "uplink_bytes_total": [0, 1], "wall_s": [0.0, 1.0]}).to_csv(
        d / "metrics.csv", index=False)


VISION = ("abl_digits", "abl_mnist1d")  # the label-skew tasks: 5 seeds, FedAvg tuned beside FedAvg


@pytest.fixture(scope="module")
def grid_summary(tmp_path_factory) -> pd.DataFrame:
    """Every cell of config/ablations.yaml as a run whose config is the one `fipa train` resolves
    (what final.json records), with a made-up final metric."""
    config = load(ABLATIONS)
    root = tmp_path_factory.mktemp("abl")
    part, warm = root / "partition.json", root / "warm.pt"
    part.touch()
    warm.touch()
    for i, cell in enumerate(grid.cells(config)):
        resolved = parse_run_config(grid.run_spec(config, cell, str(part), str(warm))).to_dict()
        metric = "test_acc" if cell.task in VISION else "test_mse"
        write_run(root / "runs", cell, resolved, 0.5 + 0.01 * (i % 7), metric=metric)
    return report.attach_knobs(report.collect([root / "runs"]))


def test_every_cell_and_warmup_of_the_ablation_config_is_a_valid_run(tmp_path):
    cells = parse_every_cell(load(ABLATIONS), tmp_path, "config/ablations.yaml")
    # 3 seeds: rho 6 + fedavg, x 2 partitions x 2 participations; rank 5 + fedavg; clients 4 x 2;
    # 5 seeds: alpha 4 x (fedavg, fedavg_tuned, fipa) on digits and on MNIST-1D
    assert len(cells) == 3 * (7 * 2 * 2 + 6 + 4 * 2) + 5 * 2 * 4 * 3


def test_ablation_tasks_share_the_default_configs_settings():
    """Everything but the swept knob is config/config.yaml's regression_1d, digits or mnist1d task."""
    abl, default = load(ABLATIONS), load(ROOT / "config" / "config.yaml")
    keys = ("task", "client", "rounds", "eval_every", "dtype")
    bases = {"abl_digits": "digits", "abl_mnist1d": "mnist1d"}
    for name, t in abl["tasks"].items():
        base = default["tasks"][bases.get(name, "regression_1d")]
        assert {k: t[k] for k in keys} == {k: base[k] for k in keys}, name

    def with_override(c, task, agg):
        return {**c["aggregators"][agg], **c["tasks"][task]["aggregator_overrides"][agg]}

    for name, base in bases.items():
        for key in ("warmup", "participation", "seeds"):
            assert abl["tasks"][name][key] == default["tasks"][base][key], (name, key)
        assert abl["tasks"][name].get("vectorize") == default["tasks"][base].get("vectorize"), name
        for agg in ("fipa", "fedavg_tuned"):
            assert with_override(abl, name, agg) == with_override(default, base, agg), (name, agg)
        assert abl["client_methods"][abl["tasks"][name]["warmup"]["client_method"]] == \
            default["client_methods"][default["tasks"][base]["warmup"]["client_method"]]
    assert abl["aggregators"]["fipa_adaptive"] == default["aggregators"]["fipa"]


def test_knob_values_come_from_the_resolved_configs(grid_summary):
    knobs = grid_summary.join(report.knob_values(grid_summary))
    rho = knobs[knobs["task"] == "abl_rho_half"].groupby("aggregator")["knob_rho"].first()
    assert rho.to_dict() == {"fedavg": None, "fipa_rho0": 0.0, "fipa_rho1e-5": 1e-5, "fipa_rho1e-4": 1e-4,
                             "fipa_rho1e-3": 1e-3, "fipa_rho1e-2": 1e-2, "fipa_adaptive": "adaptive"}
    panels = report.ablation_panels(grid_summary)
    by_knob = {}
    for p in panels:
        by_knob.setdefault(p.knob, []).append(p)
    assert [p.values for p in by_knob["rho"]] == [[0.0, 1e-5, 1e-4, 1e-3, 1e-2, "adaptive"]] * 4
    assert [report.knob_text(v) for v in by_knob["rho"][0].values] == ["0", "1e-5", "1e-4", "1e-3", "1e-2",
                                                                      "adaptive"]
    assert {(p.task, p.fipa["partition"].iloc[0], float(p.fipa["participation"].iloc[0]))
            for p in by_knob["rho"]} == {(t, s, q) for t, q in (("abl_rho_full", 1.0), ("abl_rho_half", 0.5))
                                         for s in ("domain4", "iid4")}
    assert [p.values for p in by_knob["rank"]] == [[1, 2, 5, 10, 20]]
    assert [p.values for p in by_knob["clients"]] == [[2, 4, 8, 16]]
    assert [p.values for p in by_knob["alpha"]] == [[0.05, 0.1, 0.5, "iid"]] * 2
    assert [p.task for p in by_knob["alpha"]] == list(VISION)
    for p in panels:  # 3 seeds (5 on the label-skew tasks) at every value; FedAvg beside each panel
        seeds = 5 if p.task in VISION else 3
        assert (p.fipa.groupby(p.fipa["value"].map(str)).size() == seeds).all()
        assert set(p.fedavg["aggregator"]) == {"fedavg"}
        # FedAvg with its tuned server step beside it where the task runs it
        assert (p.tuned is not None) == (p.task in VISION)
        if p.tuned is not None:
            assert set(p.tuned["aggregator"]) == {"fedavg_tuned"} and len(p.tuned) == 4 * 5
    # FedAvg is a reference line for FIPA's own knobs, a curve for properties of the split
    assert by_knob["rank"][0].fedavg["value"].isna().all() and len(by_knob["rank"][0].fedavg) == 3
    assert sorted(by_knob["clients"][0].fedavg["value"].unique()) == [2, 4, 8, 16]
    assert report.is_ablation_run(grid_summary)
    assert not report.is_ablation_run(grid_summary[grid_summary["task"] != "abl_rank"].iloc[0:0])


def test_knobs_are_read_from_configs_not_from_names(grid_summary):
    """Renaming the variants changes nothing: the rank comes from the aggregator block."""
    s = grid_summary[grid_summary["task"] == "abl_rank"]
    renamed = s.assign(aggregator=s["aggregator"].replace({"fipa_r1": "fipa_low", "fipa_r20": "fipa_high"}))
    (panel,) = report.ablation_panels(renamed)
    assert panel.knob == "rank" and panel.values == [1, 2, 5, 10, 20]
    low = report.at_value(panel.fipa, 1)
    assert set(low["aggregator"]) == {"fipa_low"}


def test_the_main_config_is_not_an_ablation_run(tmp_path):
    config = load(ROOT / ".test" / "config" / "config.yaml")
    part = tmp_path / "partition.json"
    part.touch()
    for cell in grid.cells(config):
        resolved = parse_run_config(grid.run_spec(config, cell, str(part), str(part))).to_dict()
        write_run(tmp_path / "runs", cell, resolved, 0.1)
    s = report.attach_knobs(report.collect([tmp_path / "runs"]))
    assert report.ablation_panels(s) == [] and not report.is_ablation_run(s)


def synthetic_rho_panel(tmp_path: Path) -> report.KnobPanel:
    """FIPA at rho 0 (every seed diverged), 1e-4 (one of three diverged) and adaptive; FedAvg."""
    base = {"task": {"name": "regression"}, "partition": {"scheme": "domain_split", "clients": 4},
            "rounds": 60, "participation": 1.0}
    fipa = {"fipa_rho0": {"rho": 0.0, "damping": "fixed"}, "fipa_rho1e-4": {"rho": 1e-4, "damping": "fixed"},
            "fipa_adaptive": {"rho": 1e-4, "damping": "adaptive"}}
    values = {"fipa_rho1e-4": [0.01, 0.03, None], "fipa_adaptive": [0.02, 0.02, 0.05]}
    for seed in range(3):
        cell = grid.GridCell("abl", "domain4", "local", "fedavg", seed)
        write_run(tmp_path, cell, {**base, "aggregator": {"name": "fedavg"}}, [0.4, 0.5, 0.6][seed])
        for name, agg in fipa.items():
            v = values.get(name, [None] * 3)[seed]
            resolved = {**base, "aggregator": {"name": "fipa", "rank": 10, **agg}}
            write_run(tmp_path, grid.GridCell("abl", "domain4", "local", name, seed), resolved, v or 0.0,
                      diverged=v is None)
    (panel,) = report.ablation_panels(report.attach_knobs(report.collect([tmp_path])))
    return panel


def test_knob_figure_draws_fedavg_as_a_reference_line_and_seeds_as_error_bars(tmp_path):
    panel = synthetic_rho_panel(tmp_path)
    assert panel.knob == "rho" and panel.values == [0.0, 1e-4, "adaptive"]
    fig = knob_plots.knob_figure([panel], report.KNOB_LABELS["rho"])
    (ax,) = [a for a in fig.axes if a.get_visible() and a.get_title()]
    assert draw.check_colors(fig) == []
    # on the log axis of an error: geometric mean x/÷ geometric sd over seeds
    def spread(v):
        lv = np.log(v)
        return np.exp(lv.mean()), np.exp(lv.mean() - lv.std(ddof=1)), np.exp(lv.mean() + lv.std(ddof=1))

    assert ax.get_yscale() == "log"
    # FedAvg: a dashed horizontal line over every knob value, and its band
    ref = [ln for ln in ax.get_lines() if ln.get_gid() == "agg:fedavg"]
    assert len(ref) == 1 and ref[0].get_linestyle() == "--"
    centre, lo, hi = spread([0.4, 0.5, 0.6])
    assert np.allclose(ref[0].get_ydata(), centre)
    (band,) = [p for p in ax.patches if p.get_gid() == "agg:fedavg"]
    assert to_hex(band.get_facecolor(), keep_alpha=False) == palette.color("fedavg")
    box = band.get_path().transformed(band.get_patch_transform()).get_extents()
    assert (box.y0, box.y1) == pytest.approx((lo, hi))
    # FIPA: error bars over the seeds that did not diverge; diverged seeds are not averaged
    (eb,) = [c for c in ax.containers if getattr(c, "has_yerr", False)]
    x, y = eb.lines[0].get_data()
    assert math.isnan(y[0])  # rho 0: every seed diverged
    (bars,) = eb.lines[2]
    for i, seeds in ((1, [0.01, 0.03]), (2, [0.02, 0.02, 0.05])):
        centre, lo, hi = spread(seeds)
        assert y[i] == pytest.approx(centre)
        assert bars.get_segments()[i][:, 1] == pytest.approx([lo, hi])
    texts = [t.get_text() for t in ax.texts]
    assert "3/3\ndiverged" in texts and "1/3\ndiverged" in texts
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1e-4", "adaptive"]
    table = report.knob_table([panel])
    assert table["diverged"].tolist() == [3, 1, 0] and table["n"].tolist() == [0, 2, 3]
    assert table["fipa_mean"].iloc[2] == pytest.approx(0.03)
    geometric_ratio = spread([0.02, 0.02, 0.05])[0] / spread([0.4, 0.5, 0.6])[0]
    assert table["error_ratio"].iloc[2] == pytest.approx(geometric_ratio)


def test_a_split_knob_draws_fedavg_at_every_value(grid_summary):
    panel = next(p for p in report.ablation_panels(grid_summary) if p.knob == "alpha")
    fig = knob_plots.knob_figure([panel], report.KNOB_LABELS["alpha"])
    ax = fig.axes[0]
    assert draw.check_colors(fig) == []
    (avg,) = [c for c in ax.containers if c.lines[0].get_gid() == "agg:fedavg"]
    assert avg.lines[0].get_linestyle() == "--" and len(avg.lines[0].get_xdata()) == 4
    (tuned,) = [c for c in ax.containers if c.lines[0].get_gid() == "agg:fedavg_tuned"]
    assert tuned.lines[0].get_linestyle() == "-." and len(tuned.lines[0].get_xdata()) == 4
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.05", "0.1", "0.5", "iid"]


def test_figures_writes_knob_figures_for_an_ablation_run_only(grid_summary, tmp_path):
    small = grid_summary[grid_summary["task"].isin(["abl_rank", "abl_clients"])]
    small.to_csv(tmp_path / "summary.csv", index=False)
    names = {p.name for p in plots.figures(tmp_path / "summary.csv", tmp_path / "figs")}
    assert {"knob_rank.png", "knob_clients.png", "knob_rank.pdf"} <= names
    assert not {n for n in names if n.startswith("knob_rho")}


def test_load_ablations_reads_the_make_ablations_layout(tmp_path, grid_summary):
    """`make ablations` leaves results/ablations/results/summary.csv, run directories relative
    to results/ablations; the main report finds the runs from the main results directory."""
    root = tmp_path / "results" / "ablations"
    s = grid_summary[grid_summary["task"] == "abl_rank"].drop(columns=["agg_kind"])
    runs = []
    for d in s["run_dir"]:
        rel = Path("results") / "runs" / Path(d).relative_to(Path(d).parents[4])
        (root / rel).mkdir(parents=True)
        (root / rel / "final.json").write_text((Path(d) / "final.json").read_text())
        runs.append(str(rel))
    (root / "results").mkdir(exist_ok=True)
    s.assign(run_dir=runs).to_csv(root / "results" / "summary.csv", index=False)
    got = report.load_ablations(tmp_path / "results")
    assert len(got) == len(s) and set(got["rank"].dropna()) == {1, 2, 5, 10, 20}
    assert report.load_ablations(tmp_path / "elsewhere").empty
