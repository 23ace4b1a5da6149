"""A job's priority: a number, higher runs first, with four names for the usual levels.

``low`` -10, ``normal`` 0 (every job without one), ``high`` 10, ``urgent`` 20; any whole
number from -1000 to 1000 sits between them. ``submit --priority``, ``priority`` in the create
body of ``POST /v1/batches`` and ``priority`` in a batch's metadata (a string, as metadata
values are) all read through ``parse_priority``; what people and the API are shown is
``priority_label``: the name where the number has one, else the number.
"""

from __future__ import annotations

from typing import Any

from spoolbatch.errors import InputError

LOW = -10
NORMAL = 0
HIGH = 10
URGENT = 20
NAMES: dict[str, int] = {"low": LOW, "normal": NORMAL, "high": HIGH, "urgent": URGENT}
MIN_PRIORITY = -1000
MAX_PRIORITY = 1000


def parse_priority(value: Any) -> int:
    """The number of a priority given as a name, a whole number, or a string of either."""
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in NAMES:
            return NAMES[text]
        try:
            number = int(text)
        except ValueError:
            number = None
    if number is None or not MIN_PRIORITY <= number <= MAX_PRIORITY:
        raise InputError(f"priority {value!r} is not low, normal, high, urgent or a whole number from "
                         f"{MIN_PRIORITY} to {MAX_PRIORITY}", code="invalid_priority")
    return number


def priority_label(number: int) -> str | int:
    """What a priority is shown as: its name (``urgent``), or the number where it has none."""
    for name, value in NAMES.items():
        if value == number:
            return name
    return number
