"""``DBTProjectGenerator``: writes ``dbt_project/`` from the metadata.

Every file QuantFlow writes starts with a header comment saying it is generated. Such a file is rewritten
whenever what the metadata calls for changes (a feed enabled or disabled, a QuantFlow upgrade) and removed
when it is no longer called for (e.g. ``cdm_quotes`` once no enabled feed produces quotes). Deleting the
header hands the file to the user: ``generate()`` leaves it alone from then on, and only ``force=True``
rewrites it. Files without the header that QuantFlow never wrote (user models, tests) are never touched.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from quantflow.metadata.manager import ProjectMetadata
from quantflow.storage.filesystem import is_remote
from quantflow.storage.tables import MAX_PLAUSIBLE_PRICE, MAX_PLAUSIBLE_SIZE
from quantflow.transform import templates as t
from quantflow.transform.sources import CDM_BY_KIND, RawSource, cdm_kinds, raw_sources

log = logging.getLogger(__name__)

DBT_DIR_NAME = "dbt_project"
MODELS_DIR = "models/cdm"


def dbt_project_dir(md: ProjectMetadata) -> Path:
    return md.project_dir / DBT_DIR_NAME


def is_generated(path: Path) -> bool:
    """A file QuantFlow still owns: its first line is the generated-file header."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return first.lstrip().startswith(("--", "#")) and t.GENERATED_MARK in first


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class _Column:
    name: str
    cast: str  # SQL expression over the raw column
    description: str
    tests: tuple[tuple[str, str, dict], ...] = ()  # (test, name suffix, arguments)
    nullable: bool = False  # no not_null test


_POSITIVE = ("accepted_range", "positive", {"min_value": 0, "inclusive": False, "finite": True})
_NON_NEGATIVE = ("accepted_range", "non_negative", {"min_value": 0, "finite": True})


def _columns(kind: str) -> list[_Column]:
    common = [
        _Column("symbol", "{{ quantflow_symbol('symbol') }}", "Canonical ticker: trimmed, upper case.",
                (("canonical_symbol", "canonical", {}),)),
        _Column("date", "cast(date as date)", "Exchange-local trading date."),
    ]
    dbl = "cast({c} as double precision)"
    if kind == "trades":
        return common + [
            _Column("ts", "{{ quantflow_utc('ts') }}", "Trade time, UTC.",
                    (("within_days_of_date", "near_date", {"max_days": 1}),)),
            _Column("trade_id", "cast(trade_id as bigint)", "Sequence number within (symbol, date), feed order."),
            _Column("price", dbl.format(c="price"), "Trade price (> 0).", (_POSITIVE,)),
            _Column("size", dbl.format(c="size"), "Trade size (> 0).", (_POSITIVE,)),
            _Column("side", "cast(case when side in (-1, 1) then side end as smallint)",
                    "Aggressor side from the feed: 1 buy, -1 sell, null unknown.",
                    (("accepted_values", "known", {"values": [-1, 1], "quote": False}),), nullable=True),
        ]
    if kind == "messages":
        return common + [
            _Column("ts", "{{ quantflow_utc('ts') }}", "Message time, UTC.",
                    (("within_days_of_date", "near_date", {"max_days": 1}),)),
            _Column("seq", "cast(seq as bigint)", "Position in the (symbol, date) stream: the book applies the "
                    "messages in this order."),
            _Column("message_id", "cast(message_id as bigint)", "The feed's message number (of a level set: "
                    "the message whose book it restores)."),
            _Column("type", "cast(type as smallint)", "1 submit, 2 partial cancel, 3 delete, 4 visible and 5 "
                    "hidden execution, 6 cross, 7 halt (LOBSTER codes); 9 level set from the feed's book.",
                    (("accepted_values", "known", {"values": [1, 2, 3, 4, 5, 6, 7, 9], "quote": False}),)),
            _Column("order_id", "cast(order_id as bigint)", "The feed's order id (null for level sets).",
                    nullable=True),
            _Column("size", dbl.format(c="size"), "Shares (>= 0; a level set's new size, 0: no level).",
                    (_NON_NEGATIVE,)),
            _Column("price", dbl.format(c="price"), "Price (a halt's: LOBSTER's halt code).",
                    (("accepted_range", "finite", {"finite": True}),)),
            _Column("direction", "cast(direction as smallint)", "Side of the resting order: 1 buy (bid), "
                    "-1 sell (ask).", (("accepted_values", "known", {"values": [-1, 1], "quote": False}),)),
        ]
    if kind == "quotes":
        return common + [
            _Column("ts", "{{ quantflow_utc('ts') }}", "Quote time, UTC.",
                    (("within_days_of_date", "near_date", {"max_days": 1}),)),
            _Column("quote_id", "cast(quote_id as bigint)", "Sequence number within (symbol, date), feed order."),
            _Column("bid", dbl.format(c="bid"), "Best bid (> 0, <= ask).", (_POSITIVE,)),
            _Column("ask", dbl.format(c="ask"), "Best ask (> 0, >= bid).", (_POSITIVE,)),
            _Column("bid_size", dbl.format(c="bid_size"), "Size at the bid (> 0).", (_POSITIVE,)),
            _Column("ask_size", dbl.format(c="ask_size"), "Size at the ask (> 0).", (_POSITIVE,)),
        ]
    if kind == "bars_daily":
        return common + [
            _Column("open", dbl.format(c="open"), "Open (> 0; adjusted when the feed adjusts).", (_POSITIVE,)),
            _Column("high", dbl.format(c="high"), "High (>= open, close, low).", (_POSITIVE,)),
            _Column("low", dbl.format(c="low"), "Low (<= open, close, high).", (_POSITIVE,)),
            _Column("close", dbl.format(c="close"), "Close (> 0).", (_POSITIVE,)),
            _Column("volume", dbl.format(c="volume"), "Volume (>= 0).", (_NON_NEGATIVE,)),
            _Column("adj_factor", "cast(coalesce(adj_factor, 1.0) as double precision)",
                    "Adjusted close / raw close (1.0 when unadjusted).", (_POSITIVE,)),
        ]
    raise ValueError(f"unknown kind {kind!r}")


def _below(column: str, bound: float) -> str:
    return f"{column} < {bound:g}  -- larger is corrupt, not a market value"


_PRICE, _SIZE = MAX_PLAUSIBLE_PRICE, MAX_PLAUSIBLE_SIZE

# Quality filters: rows failing them never reach the CDM (tests then guard what the filters cannot see).
_FILTERS: dict[str, list[str]] = {
    "trades": ["ts is not null", "trade_id is not null", "{{ quantflow_positive('price') }}",
               "{{ quantflow_positive('size') }}", _below("price", _PRICE), _below("size", _SIZE)],
    "quotes": ["ts is not null", "quote_id is not null", "{{ quantflow_positive('bid') }}",
               "{{ quantflow_positive('ask') }}", "{{ quantflow_positive('bid_size') }}",
               "{{ quantflow_positive('ask_size') }}", "bid <= ask  -- crossed quotes are dropped",
               _below("ask", _PRICE), _below("bid_size", _SIZE), _below("ask_size", _SIZE)],
    "messages": ["ts is not null", "seq is not null", "type is not null", "direction in (-1, 1)",
                 "{{ quantflow_non_negative('size') }}", "{{ quantflow_is_finite('price') }}",
                 _below("abs(price)", _PRICE), _below("size", _SIZE)],
    "bars_daily": ["{{ quantflow_positive('open') }}", "{{ quantflow_positive('high') }}",
                   "{{ quantflow_positive('low') }}", "{{ quantflow_positive('close') }}",
                   "{{ quantflow_non_negative('volume') }}", "{{ quantflow_positive('adj_factor') }}",
                   "low <= least(open, close)  -- OHLC must be consistent", "high >= greatest(open, close)",
                   _below("high", _PRICE), _below("volume", _SIZE)],
}

# (partition, order) of the duplicate ranking: the first row of each partition is kept.
_DEDUP: dict[str, tuple[list[str], list[str]]] = {
    "trades": (["symbol", "date", "trade_id"], ["ts", "price", "size"]),
    "quotes": (["symbol", "date", "quote_id"], ["ts", "bid", "ask"]),
    "messages": (["symbol", "date", "seq"], ["ts", "message_id"]),
    "bars_daily": (["symbol", "date"], ["volume desc", "close"]),
}

_MODEL_TESTS: dict[str, list[tuple[str, str, dict]]] = {
    "trades": [],
    "quotes": [("expression_is_true", "bid_not_above_ask", {"expression": "bid <= ask"})],
    "messages": [],
    "bars_daily": [("expression_is_true", "ohlc_consistent",
                    {"expression": "low <= least(open, close) and high >= greatest(open, close)"})],
}

_DESCRIPTIONS = {
    "trades": "Trades",
    "quotes": "Top-of-book quotes",
    "messages": "Order messages",
    "bars_daily": "Daily OHLCV bars",
}


def _feeds_text(sources: list[RawSource]) -> str:
    return ", ".join(s.feed for s in sources)


def render_model_sql(kind: str, sources: list[RawSource]) -> str:
    table = CDM_BY_KIND[kind]
    cols = _columns(kind)
    names = [c.name for c in cols]
    selects = []
    for s in sources:
        selects.append(
            f"    select '{s.feed}' as feed, {s.priority} as feed_priority, {', '.join(names)}\n"
            f"    from {{{{ source('raw', '{s.table}') }}}}\n"
            f"    where {{{{ quantflow_window('date', quantflow_symbol('symbol')) }}}}"
        )
    typed = ",\n".join(f"        {c.cast} as {c.name}" for c in cols)
    filters = ["symbol is not null", "symbol <> ''", "date is not null", *_FILTERS[kind]]
    where = "\n      and ".join(filters)
    partition, order = _DEDUP[kind]
    multi = len(sources) > 1
    if multi:
        order = ["feed_priority", *order]
        chosen = (
            "preferred_feed as (\n\n"
            "    -- one feed per (symbol, date): the first enabled feed (metadata order) with valid rows that day\n"
            "    select symbol, date, min(feed_priority) as feed_priority\n"
            "    from valid\n"
            "    group by symbol, date\n\n"
            "),\n\n"
            "chosen as (\n\n"
            "    select valid.*\n"
            "    from valid\n"
            "    join preferred_feed using (symbol, date, feed_priority)\n\n"
            "),\n\n"
        )
        dedup_from = "chosen"
    else:
        chosen, dedup_from = "", "valid"
    union = "\n\n    union all\n\n".join(selects)
    return (
        t.SQL_HEADER
        + "{{\n"
        "    config(\n"
        "        materialized='incremental',\n"
        "        incremental_strategy='delete+insert',\n"
        "        unique_key=['symbol', 'date'],\n"
        "        on_schema_change='append_new_columns',\n"
        "        indexes=[{'columns': ['symbol', 'date']}],\n"
        "        pre_hook=\"{{ quantflow_clear_window() }}\",\n"
        "    )\n"
        "}}\n"
        f"{{#- {table}: {_DESCRIPTIONS[kind]} of the enabled feeds ({_feeds_text(sources)}) for the run\n"
        "    window (vars start_date, end_date, symbols); each run replaces exactly its (symbol, date)s. -#}\n\n"
        "with raw_rows as (\n\n"
        f"{union}\n\n"
        "),\n\n"
        "typed as (\n\n"
        "    select\n"
        f"{typed},\n"
        "        feed,\n"
        "        feed_priority\n"
        "    from raw_rows\n\n"
        "),\n\n"
        "valid as (\n\n"
        "    -- quality filters: rows failing them never reach the CDM\n"
        "    select *\n"
        "    from typed\n"
        f"    where {where}\n\n"
        "),\n\n"
        f"{chosen}"
        "ranked as (\n\n"
        "    select\n"
        "        *,\n"
        f"        row_number() over (partition by {', '.join(partition)} order by {', '.join(order)}) as duplicate_rank\n"
        f"    from {dedup_from}\n\n"
        ")\n\n"
        f"select {', '.join(names)}, feed\n"
        "from ranked\n"
        "where duplicate_rank = 1\n"
    )


def _yaml_scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _test_yaml(table: str, column: str | None, test: tuple[str, str, dict], indent: str) -> list[str]:
    kind, suffix, args = test
    name = f"{table}_{column}_{suffix}" if column else f"{table}_{suffix}"
    lines = [f"{indent}- {kind}:", f"{indent}    name: {name}"]
    if args:
        lines.append(f"{indent}    arguments:")
        lines.extend(f"{indent}      {k}: {_yaml_scalar(v)}" for k, v in args.items())
    return lines


def render_model_yml(kind: str, sources: list[RawSource]) -> str:
    table = CDM_BY_KIND[kind]
    partition, _ = _DEDUP[kind]
    filters = {
        "trades": "non-positive prices or sizes",
        "quotes": "non-positive prices or sizes and crossed quotes (bid > ask)",
        "messages": "negative sizes, non-finite prices and unknown sides",
        "bars_daily": "non-positive prices, negative volume and inconsistent OHLC",
    }[kind]
    lines = [
        t.YAML_HEADER.rstrip("\n"),
        "version: 2",
        "",
        "models:",
        f"  - name: {table}",
        "    description: >-",
        f"      {_DESCRIPTIONS[kind]} of the enabled feeds ({_feeds_text(sources)}) in the common data model:",
        "      canonical symbols, UTC timestamps, one feed per (symbol, date) in metadata order, duplicates",
        f"      removed, rows with {filters} dropped.",
        "    data_tests:",
        *_test_yaml(table, None, ("unique_combination", "unique_" + "_".join(partition),
                                  {"combination": partition}), "      "),
    ]
    for test in _MODEL_TESTS[kind]:
        lines.extend(_test_yaml(table, None, test, "      "))
    lines.append("    columns:")
    for col in _columns(kind):
        lines.append(f"      - name: {col.name}")
        lines.append(f"        description: {_yaml_scalar(col.description)}")
        if col.nullable and not col.tests:
            continue
        lines.append("        data_tests:")
        if not col.nullable:
            lines.extend(_test_yaml(table, col.name, ("not_null", "not_null", {}), "          "))
        for test in col.tests:
            lines.extend(_test_yaml(table, col.name, test, "          "))
    lines.append("      - name: feed")
    lines.append('        description: "The QuantFlow feed the row came from."')
    lines.append("        data_tests:")
    lines.extend(_test_yaml(table, "feed", ("not_null", "not_null", {}), "          "))
    return "\n".join(lines) + "\n"


def render_sources_yml(sources: list[RawSource], feed_kinds_by_name: dict[str, str]) -> str:
    lines = [
        t.YAML_HEADER.rstrip("\n"),
        "version: 2",
        "",
        "sources:",
        "  - name: raw",
        "    description: >-",
        "      Raw feed tables written by the ingest stage (lake tables raw_<feed>_<kind>). QuantFlow exposes",
        "      them in the warehouse before each dbt run (DuckDB views over a local lake, copied rows otherwise).",
        "    schema: \"{{ env_var('QF_RAW_SCHEMA', 'raw') }}\"",
    ]
    if not sources:
        lines.append("    tables: []")
    else:
        lines.append("    tables:")
    for s in sources:
        lines += [
            f"      - name: {s.table}",
            f"        description: \"{_DESCRIPTIONS[s.kind]} from feed `{s.feed}` ({feed_kinds_by_name[s.feed]}).\"",
            "        config:",
            "          meta:",
            f"            quantflow_feed: {s.feed}",
            f"            quantflow_kind: {s.kind}",
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- generator


class DBTProjectGenerator:
    """Renders the dbt project for a project's metadata and writes what is missing or outdated."""

    def __init__(self, metadata: ProjectMetadata, dbt_dir: str | Path | None = None):
        self.metadata = metadata
        self.dbt_dir = Path(dbt_dir) if dbt_dir is not None else dbt_project_dir(metadata)
        self.removed: list[Path] = []

    def _warehouse_default(self) -> str:
        configured = self.metadata.project.storage.warehouse_path
        if is_remote(configured) or Path(configured).is_absolute():
            return configured
        return Path(os.path.relpath(self.metadata.project_dir / configured, self.dbt_dir)).as_posix()

    def render(self) -> dict[str, str]:
        """``{path relative to the dbt project: content}`` of every file the metadata calls for."""
        sources = raw_sources(self.metadata)
        feed_kind = {f.name: f.kind for f in self.metadata.project.ingest.enabled_feeds}
        files = {
            "dbt_project.yml": t.YAML_HEADER + t.DBT_PROJECT_YML,
            "profiles.yml": t.YAML_HEADER + t.PROFILES_YML.format(warehouse_default=self._warehouse_default()),
            ".gitignore": t.YAML_HEADER + t.GITIGNORE,
            "macros/quantflow.sql": t.SQL_HEADER + t.MACROS_SQL,
            "macros/tests/generic_tests.sql": t.SQL_HEADER + t.GENERIC_TESTS_SQL,
            "models/sources.yml": render_sources_yml(sources, feed_kind),
        }
        for kind in cdm_kinds(self.metadata):
            of_kind = [s for s in sources if s.kind == kind]
            table = CDM_BY_KIND[kind]
            files[f"{MODELS_DIR}/{table}.sql"] = render_model_sql(kind, of_kind)
            files[f"{MODELS_DIR}/{table}.yml"] = render_model_yml(kind, of_kind)
        return files

    def stale_files(self) -> list[Path]:
        """Generated files (header still there) under models/ that the metadata no longer calls for."""
        wanted = {self.dbt_dir / rel for rel in self.render()}
        models = self.dbt_dir / "models"
        if not models.is_dir():
            return []
        return sorted(p for p in models.rglob("*") if p.is_file() and p.suffix in (".sql", ".yml", ".yaml")
                      and p not in wanted and is_generated(p))

    def pending(self, force: bool = False) -> list[Path]:
        """Files ``generate(force)`` would write."""
        out = []
        for rel, content in self.render().items():
            path = self.dbt_dir / rel
            if not path.exists() or force or is_generated(path) and path.read_text(encoding="utf-8") != content:
                out.append(path)
        return out

    def is_up_to_date(self) -> bool:
        return not self.pending() and not self.stale_files()

    def generate(self, force: bool = False) -> list[Path]:
        """Write missing and outdated generated files (every file with ``force``); returns the paths written.

        Generated files the metadata no longer calls for are deleted (listed in ``self.removed``).
        """
        files = self.render()
        written = []
        for path in self.pending(force):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # runs at once write their own
            tmp.write_text(files[path.relative_to(self.dbt_dir).as_posix()], encoding="utf-8")
            os.replace(tmp, path)
            written.append(path)
        self.removed = self.stale_files()
        for path in self.removed:
            path.unlink(missing_ok=True)  # another run may have removed it first
            log.info("removed %s (no enabled feed produces it any more)", path)
        for path in written:
            log.info("wrote %s", path)
        return written
