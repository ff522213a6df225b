"""Peak-memory readings from /proc for the benchmark scripts (Linux only)."""

from __future__ import annotations


def proc_status_kib(field: str) -> int:
    """A ``Vm*`` field of /proc/self/status in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
