"""The report: run directories to the summary table, its statistics, the paper's claims, health
flags, tables, the ablation study, and the executed notebook (notebooks/report.ipynb).

One module per job, importing only downward:

    roles       federated runs and the reference, from final.json's ``role``
    runs        run directories -> summary.csv (``fipa collect``) and its readers
    stats       paired effects, t intervals, verdicts, seeds needed
    health      health flags (diverged, worse than start, reference beaten, unlearned)
    tables      setting table, final table, the aggregator x task pivot
    ablations   the ablation study's runs, knob sweeps and table
    claims      the paper's claims, each with its own evaluation
    notebook    executing the report notebook (``fipa report``)
    draw, plots, knob_plots
                figures (matplotlib; not imported here, so collecting needs no plotting library)

The names below are the package's API for the CLI, the notebook and the tests.
"""

from fipa.report.ablations import (
    ABLATION_KNOBS,
    KNOB_LABELS,
    TUNED_FEDAVG,
    KnobPanel,
    ablation_panels,
    at_value,
    is_ablation_run,
    knob_order,
    knob_table,
    knob_text,
    knob_values,
    load_ablations,
)
from fipa.report.claims import (
    CLAIMS,
    RANK_MARGIN,
    VERDICT_CSS,
    Claim,
    CommunicationClaim,
    LowRankClaim,
    PairedClaim,
    claims_html,
    claims_table,
    communication,
    sweeps,
)
from fipa.report.health import THRESHOLDS, health_flags, initial_and_final, learned
from fipa.report.notebook import ReportError, check_executed, execute_report
from fipa.report.roles import FEDERATED, REFERENCE, is_reference, reference_names, role_column, role_of
from fipa.report.runs import (
    CELL,
    ID_COLUMNS,
    KNOBS,
    attach_benchmarks,
    attach_knobs,
    collect,
    find_runs,
    load_curves,
    read_final,
    read_metrics,
    read_summary,
    summary_row,
    under,
)
from fipa.report.stats import (
    INCONCLUSIVE,
    METRIC_LABELS,
    NOT_MEASURED,
    NOT_SUPPORTED,
    SUPPORTED,
    Interval,
    arrow,
    cell_stats,
    comparison_table,
    direction_of,
    error_of,
    format_ratio,
    metric_label,
    paired_effects,
    pooled_interval,
    seeds_needed,
    t_interval,
    verdict_of,
)
from fipa.report.tables import FLAG_MARKS, final_table, pivot, setting_table, styled_pivot

__all__ = [
    "ABLATION_KNOBS", "CELL", "CLAIMS", "FEDERATED", "FLAG_MARKS", "ID_COLUMNS", "INCONCLUSIVE",
    "KNOBS", "KNOB_LABELS", "METRIC_LABELS", "NOT_MEASURED", "NOT_SUPPORTED", "RANK_MARGIN", "REFERENCE",
    "SUPPORTED", "THRESHOLDS", "TUNED_FEDAVG", "VERDICT_CSS", "Claim", "CommunicationClaim", "Interval",
    "KnobPanel", "LowRankClaim", "PairedClaim", "ReportError", "ablation_panels", "arrow", "at_value",
    "attach_benchmarks", "attach_knobs", "cell_stats", "check_executed", "claims_html", "claims_table",
    "collect", "communication", "comparison_table", "direction_of", "error_of", "execute_report",
    "final_table", "find_runs", "format_ratio", "health_flags", "initial_and_final", "is_ablation_run",
    "is_reference", "knob_order", "knob_table", "knob_text", "knob_values", "learned", "load_ablations",
    "load_curves", "metric_label", "paired_effects", "pivot", "pooled_interval", "read_final",
    "read_metrics", "read_summary", "reference_names", "role_column", "role_of", "seeds_needed",
    "setting_table", "styled_pivot", "summary_row", "sweeps", "t_interval", "under", "verdict_of",
]
