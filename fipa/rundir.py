"""A run directory before training: its lock, stale runs moved aside, finished runs recognised.

What a run directory holds (metrics.csv, final.json, the checkpoint) is written by the round
loop (fipa/loop.py); this module decides, before any training, whether ``outdir`` can hold
the run, and whether a run already there is finished, resumable or stale.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fipa.checkpoint import CHECKPOINT, fingerprint, read_checkpoint, stale_reason
from fipa.config import RunConfig, canonical
from fipa.errors import ConfigError, UnreadableFileError
from fipa.io import RunDirLock, remove_stale_temps


def supersede_stale_run(outdir: Path, cfg: RunConfig) -> Path | None:
    """Move a checkpointed run of another config (or one past this config's rounds) into
    ``outdir/superseded/<time>/``.

    Resuming such a run would mix two configs (or shorten a finished run, whose final.json
    would then record more rounds than its config), and deleting it would lose finished work;
    returns the new folder, or None when there is nothing stale (no or a matching checkpoint,
    or an unreadable one, which training then reports).
    """
    import shutil

    ckpt = outdir / CHECKPOINT
    if not ckpt.is_file():
        if not (outdir / "final.json").is_file():
            return None
        # a finished run whose checkpoint is gone: it cannot be resumed, and must not be overwritten
    else:
        try:
            raw = read_checkpoint(ckpt)
        except UnreadableFileError:
            return None
        if stale_reason(raw, fingerprint(cfg), cfg.rounds) is None:
            return None
    dest = outdir / "superseded" / time.strftime("%Y%m%dT%H%M%S")
    dest.mkdir(parents=True)
    for item in outdir.iterdir():
        if item.name != "superseded":
            shutil.move(str(item), dest / item.name)
    return dest


def finished_run(outdir: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The final.json of a run in ``outdir`` that already finished with exactly ``cfg``, else None.

    Lets a batch skip its finished cells without building their task; any difference in the
    resolved config (more rounds included) means the run is not finished.
    """
    try:
        final = json.loads((outdir / "final.json").read_text())
    except (OSError, ValueError):
        return None
    if not (outdir / CHECKPOINT).is_file():
        return None
    return final if canonical(final.get("config")) == canonical(cfg.to_dict()) else None


def prepare_run_dir(outdir: Path, cfg: RunConfig, supersede: bool, record_config: bool,
                    echo: Callable[[str], None]) -> None:
    """Before training into ``outdir``: take its lock (held until the process ends or the run
    closes), remove temp files of killed writers, move a run of another config aside
    (``supersede``) and write the resolved config as ``run.yaml`` (``record_config``: it came
    inline, not as a file)."""
    check_writable(outdir)
    if outdir.is_dir():  # a new directory is created (and locked) only once training starts
        RunDirLock(outdir).acquire()
        remove_stale_temps(outdir)
    if supersede:
        moved = supersede_stale_run(outdir, cfg)
        if moved is not None:
            echo(f"{outdir}: the config changed; the earlier run is kept in {moved}")
    if record_config:
        from fipa.io import write_yaml

        write_yaml(outdir / "run.yaml", cfg.to_dict())


def check_writable(outdir: Path) -> None:
    """Fail before any training if ``outdir`` cannot hold a run: a file is in the way, or it (or
    the nearest existing folder above it) is not writable."""
    if outdir.exists() and not outdir.is_dir():
        raise ConfigError(f"{outdir}: is a file, not a run directory; choose another -o/--output")
    probe = outdir
    while not probe.exists():
        if probe.is_symlink():  # exists() is False for a link to nowhere and for a link loop
            raise ConfigError(f"{outdir}: {probe} is a symbolic link that leads nowhere (or to itself); "
                              "remove the link or choose another -o/--output")
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{outdir}: cannot write there ({probe} is not a writable directory); "
                          "choose another -o/--output or fix its permissions")
