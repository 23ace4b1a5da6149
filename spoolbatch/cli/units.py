"""How the command line writes a size and a length of time: one way each, everywhere it shows one."""

from __future__ import annotations

from rich.filesize import decimal


def size(n: int) -> str:
    """A byte count in decimal units, as disk tools and rich's own bars write it: '512 bytes', '1.2 MB'."""
    return decimal(n)


def duration(seconds: float | None) -> str:
    """'42s', '3m07s', '5h02m'; '-' for unknown (a time gone negative by a clock's step shows as 0s)."""
    if seconds is None:
        return "-"
    whole = int(max(0.0, seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
