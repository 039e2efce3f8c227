"""What every metadata model shares: extras kept (so the loader can report unknown keys) and name patterns."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9.\-_]{0,15}$")
NAME_RE = r"^[a-z][a-z0-9_]{0,40}$"


def repeated(names: list[str]) -> list[str]:
    """The names that occur more than once, sorted (for "must be distinct" checks)."""
    return sorted({n for n in names if names.count(n) > 1})


DURATION_RE = r"^\d+(ns|us|ms|s|m|h|d|w)$"
DURATION_UNITS_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9,
                     "d": 86_400 * 10**9, "w": 7 * 86_400 * 10**9}


def duration_ns(text: str) -> int:
    """``"100ms"``, ``"1s"``, ``"5m"`` (minutes), ``"1h"``, ``"1d"``, ``"1w"`` -> nanoseconds."""
    m = re.match(r"^(\d+)(ns|us|ms|s|m|h|d|w)$", text.strip())
    if not m:
        raise ValueError(f"duration {text!r} must look like 100ms, 1s, 5m (minutes), 1h, 1d or 1w")
    return int(m.group(1)) * DURATION_UNITS_NS[m.group(2)]


def valid_timezone(name: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name like America/New_York)") from None
    return name


TimeZoneName = Annotated[str, AfterValidator(valid_timezone)]
"""An IANA time zone name, checked when the metadata loads."""


class MetadataModel(BaseModel):
    """Base: unknown keys are kept as extras, so the loader can report them (errors in strict mode)."""

    model_config = ConfigDict(extra="allow")
