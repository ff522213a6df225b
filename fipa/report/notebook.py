"""Executing the report notebook (``fipa report``): papermill, a completeness check, HTML export."""

from __future__ import annotations

import os
from pathlib import Path

from fipa import paths
from fipa.errors import FipaError
from fipa.io import atomic_write
from fipa.report.runs import read_summary, under

SKIP_KEY = "fipa_skipped"  # output metadata of a figure cell that says why it drew nothing


class ReportError(FipaError):
    """The executed report is incomplete (a figure without an image, output on stderr)."""


def check_executed(nb) -> list[str]:
    """Problems of an executed notebook: a cell tagged ``figure`` without an image (unless it
    said why through fipa.report.draw.skip), any output on stderr, any error. Empty when complete."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        outs = cell.get("outputs", [])
        tags = cell.get("metadata", {}).get("tags", [])
        head = cell.source.strip().splitlines()[0][:60] if cell.source.strip() else ""
        for o in outs:
            if o.output_type == "stream" and o.get("name") == "stderr":
                problems.append(f"cell {i} ({head!r}) wrote to stderr: {o.get('text', '')[:200]!r}")
            if o.output_type == "error":
                problems.append(f"cell {i} ({head!r}) raised {o.get('ename')}: {o.get('evalue', '')[:200]}")
        skipped = any(o.get("metadata", {}).get(SKIP_KEY) for o in outs)
        if "figure" in tags and not skipped and not any("image/png" in o.get("data", {}) for o in outs):
            problems.append(f"cell {i} ({head!r}) is a figure cell but produced no image")
    return problems


def _export_html(nb, html: str | Path) -> None:
    """The executed notebook as HTML: code hidden, parameter cells dropped."""
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_preprocessor(TagRemovePreprocessor(
        remove_cell_tags={"parameters", "injected-parameters"}, enabled=True), enabled=True)
    body, _ = exporter.from_notebook_node(nb)
    atomic_write(html, lambda fh: fh.write(body))


def execute_report(notebook: str | Path, output: str | Path, html: str | Path | None,
                   results_dir: str | Path) -> None:
    """Run the notebook with papermill (parameter ``results_dir``), check that every figure cell
    drew and nothing went to stderr, then export HTML (code hidden, parameter cells dropped)."""
    import nbformat
    import papermill

    read_summary(under(results_dir, paths.SUMMARY))  # the notebook's input, checked before a kernel starts
    output = Path(output)
    tmp = output.with_name(f".running.{output.name}")
    os.environ.setdefault("DDE_BACKEND", "pytorch")
    papermill.execute_notebook(str(notebook), str(tmp), parameters={"results_dir": str(results_dir)},
                               progress_bar=False, kernel_name="python3")
    nb = nbformat.read(tmp, as_version=4)
    problems = check_executed(nb)
    if problems:
        raise ReportError(f"{tmp} is incomplete (kept for inspection):\n  " + "\n  ".join(problems))
    tmp.replace(output)
    if html is not None:
        _export_html(nb, html)
