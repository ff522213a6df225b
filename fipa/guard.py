"""Is another Snakemake working in this directory? (before `snakemake --unlock`)

Snakemake's lock message invites `--unlock`, which is safe only when no other Snakemake runs
on the same working directory: two of them then write the same results and one deletes the
other's outputs. Linux only (reads /proc); elsewhere it finds nothing and says so.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def other_snakemakes(directory: str | os.PathLike) -> list[tuple[int, str]]:
    """(pid, command line) of every other Snakemake process whose working directory is ``directory``."""
    target = Path(directory).resolve()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        if pid == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            cwd = Path(os.readlink(proc / "cwd")).resolve()
        except OSError:  # gone, or another user's process
            continue
        if "snakemake" in cmd and "--unlock" not in cmd and "fipa.guard" not in cmd and cwd == target:
            found.append((pid, cmd))
    return found


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when no other Snakemake works in the directory (argv[0], default .), else 1."""
    directory = (argv if argv is not None else sys.argv[1:]) or ["."]
    others = other_snakemakes(directory[0])
    if not others:
        return 0
    print(f"another Snakemake is running in {Path(directory[0]).resolve()}; not unlocking "
          "(wait for it, or stop it first):", file=sys.stderr)
    for pid, cmd in others:
        print(f"  pid {pid}: {cmd[:200]}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
