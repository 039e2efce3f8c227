"""What every metadata model shares: extras kept (so the loader can report unknown keys) and name patterns."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9.\-_]{0,15}$")
NAME_RE = r"^[a-z][a-z0-9_]{0,40}$"


def repeated(names: list[str]) -> list[str]:
    """The names that occur more than once, sorted (for "must be distinct" checks)."""
    return sorted({n for n in names if names.count(n) > 1})
DURATION_RE = r"^\d+(ns|us|ms|s|m|h|d|w)$"


class MetadataModel(BaseModel):
    """Base: unknown keys are kept as extras, so the loader can report them (errors in strict mode)."""

    model_config = ConfigDict(extra="allow")
