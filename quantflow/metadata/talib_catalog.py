"""What the metadata needs to know about TA-Lib's functions (inputs, parameters, outputs, flags) without
importing TA-Lib: ``import talib`` pulls in pandas and polars (over a second), too slow for validating
metadata or loading the Dagster definitions. ``talib_catalog.json`` is written from the installed TA-Lib by
``python -m quantflow.metadata.talib_catalog`` and a test checks it still matches; when another TA-Lib
version is installed the catalog is read from TA-Lib itself.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import metadata as _dist
from pathlib import Path
from typing import Any

CATALOG_PATH = Path(__file__).with_name("talib_catalog.json")
PRICE_INPUTS = ("open", "high", "low", "close", "volume")


def _installed_version() -> str | None:
    try:
        return _dist.version("ta-lib")
    except _dist.PackageNotFoundError:
        return None


def live_catalog() -> dict[str, Any]:
    """The catalog read from the installed TA-Lib: per function its inputs (bar columns it reads, in order),
    parameters with defaults, output names and flags."""
    import talib
    from talib import abstract

    functions = {}
    for name in talib.get_functions():
        info = abstract.Function(name).info
        inputs: list[str] = []
        for value in info["input_names"].values():
            inputs.extend([value] if isinstance(value, str) else value)
        functions[name] = {"inputs": inputs, "params": dict(info["parameters"]),
                           "outputs": list(info["output_names"]), "flags": list(info["function_flags"] or [])}
    return {"version": _installed_version(), "functions": functions}


@cache
def catalog() -> dict[str, dict[str, Any]]:
    """Function name -> its description (from the shipped file when it was written from this TA-Lib)."""
    shipped = json.loads(CATALOG_PATH.read_text())
    if shipped["version"] == _installed_version():
        return shipped["functions"]
    return live_catalog()["functions"]


def write_catalog() -> None:
    CATALOG_PATH.write_text(json.dumps(live_catalog(), indent=0, sort_keys=True) + "\n")


if __name__ == "__main__":
    write_catalog()
    print(f"wrote {CATALOG_PATH} ({len(catalog())} functions)")
