"""Loading and validating ``project_metadata/*.yaml`` with errors that point at the file, line and field.

YAML is parsed with ruamel's round-trip loader because it keeps the line of every key and list item, so a
pydantic error location (``project.ingest.feeds.1.kind``) can be mapped back to a line in the file.
All errors of a file are collected and reported together, one short line each.

Values substituted from the environment (``${VAR}``) are secrets: an error never echoes them (it names the
variable instead), and every substituted value is remembered (``ParsedYaml.env_values``) so the
interfaces can scrub them from any message they print or store. Values of ``local.yaml`` (connections)
are never echoed either.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from quantflow.metadata.schema import FEED_KINDS

_ENV_RE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
_MAX_ECHO = 60  # characters of a rejected value shown in an error
MIN_REDACTED = 6  # shorter environment values (a port, a flag) are not hidden: that would garble messages


def redactable(env_values: dict[str, str]) -> dict[str, str]:
    """The environment values worth replacing in text (value -> its ``${VAR}`` reference)."""
    return {value: ref for value, ref in env_values.items() if len(value) >= MIN_REDACTED}


def redact_text(text: str, secrets: dict[str, str]) -> str:
    """``text`` with each secret replaced by its reference, in any letter case (validators upper- or
    lower-case what they echo), longest first."""
    for value in sorted(secrets, key=len, reverse=True):
        text = re.sub(re.escape(value), lambda _m, ref=secrets[value]: ref, text, flags=re.IGNORECASE)
    return text


@dataclass(frozen=True)
class MetadataIssue:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field or '<document>'}: {self.message}"


class MetadataError(Exception):
    """One or more problems in the metadata files; ``issues`` lists every one."""

    def __init__(self, issues: list[MetadataIssue]):
        self.issues = issues
        count = len(issues)
        super().__init__(f"{count} metadata error{'s' if count != 1 else ''}:\n" + "\n".join(f"  {i}" for i in issues))


@dataclass
class ParsedYaml:
    path: Path
    data: Any
    issues: list[MetadataIssue] = field(default_factory=list)
    env_locs: set[tuple] = field(default_factory=set)  # where a value came (partly) from the environment
    env_values: dict[str, str] = field(default_factory=dict)  # substituted value -> "${NAME}"
    echo_values: bool = True  # False for files of connections and secrets (local.yaml)

    def may_echo(self, loc: tuple) -> bool:
        """Whether an error at ``loc`` may show the value it rejected."""
        if not self.echo_values:
            return False
        return not any(loc[: len(env)] == env or env[: len(loc)] == loc for env in self.env_locs)


def parse_yaml(path: Path, interpolate_env: bool = False) -> ParsedYaml:
    """Parse one YAML file keeping line numbers; syntax errors become issues, not exceptions."""
    yaml = YAML(typ="rt")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return ParsedYaml(path, None, [MetadataIssue(str(path), None, "", f"cannot read file: {exc.strerror or exc}")])
    try:
        data = yaml.load(text)
    except DuplicateKeyError as exc:
        mark = exc.problem_mark
        key = re.match(r'found duplicate key "(?P<key>[^"]*)"', exc.problem or "")
        first = exc.context_mark.line + 1 if exc.context_mark is not None else None
        what = f"duplicate key {key['key']!r}" if key else "duplicate key"
        where = f" (the mapping starting on line {first} already has it)" if first else ""
        return ParsedYaml(path, None, [MetadataIssue(str(path), mark.line + 1 if mark else None, "",
                                                     f"invalid YAML: {what}{where}")])
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        return ParsedYaml(path, None, [MetadataIssue(str(path), line, "", f"invalid YAML: {_short(problem)}")])
    except YAMLError as exc:
        return ParsedYaml(path, None, [MetadataIssue(str(path), None, "", f"invalid YAML: {_short(str(exc))}")])
    parsed = ParsedYaml(path, data)
    if data is None:
        parsed.data = CommentedMap()
    elif not isinstance(data, dict):
        parsed.issues.append(MetadataIssue(str(path), 1, "", f"expected a mapping at the top level, got {type(data).__name__}"))
    if interpolate_env and not parsed.issues:
        _interpolate(parsed.data, parsed, ())
    return parsed


def _interpolate(node: Any, parsed: ParsedYaml, loc: tuple) -> None:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in string values with environment variables, in place."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in list(items):
        if isinstance(value, str) and "${" in value:
            missing: list[str] = []
            node[key] = _ENV_RE.sub(lambda m, missing=missing: _env_value(m, missing, parsed), value)
            if node[key] != value:
                parsed.env_locs.add(loc + (key,))
            for name in missing:
                parsed.issues.append(
                    MetadataIssue(str(parsed.path), line_of(parsed.data, loc + (key,)), _dotted(loc + (key,)),
                                  f"environment variable {name} is not set (referenced as ${{{name}}})")
                )
        elif isinstance(value, (dict, list)):
            _interpolate(value, parsed, loc + (key,))


def _env_value(m: re.Match, missing: list[str], parsed: ParsedYaml) -> str:
    val = os.environ.get(m["name"])
    if val is not None:
        if val:
            parsed.env_values[val] = f"${{{m['name']}}}"
        return val
    if m["default"] is not None:
        return m["default"]
    missing.append(m["name"])
    return ""


def line_of(data: Any, loc: tuple) -> int | None:
    """1-based line of the deepest node along ``loc`` that exists in the parsed YAML."""
    node, line = data, None
    for key in loc:
        if isinstance(node, CommentedMap) and key in node:
            line = node.lc.key(key)[0] + 1
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and 0 <= key < len(node):
            line = node.lc.item(key)[0] + 1
            node = node[key]
        else:
            if line is None and isinstance(node, (CommentedMap, CommentedSeq)) and node.lc.line is not None:
                line = node.lc.line + 1
            break
    return line


def _dotted(loc: tuple) -> str:
    """``a.b.0.c``; a key longer than 40 characters is cut, so an issue stays one short line."""
    return ".".join(str(p) if len(str(p)) <= 40 else str(p)[:37] + "..." for p in loc)


def _short(text: str, limit: int = 160) -> str:
    """One line, at most ``limit`` characters: an error message stays readable whatever the YAML holds."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _echo(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_ECHO else text[: _MAX_ECHO - 4] + "...'"


def _describe(err: dict, echo: bool, secrets: dict[str, str]) -> str:
    """One issue's text; secrets from the environment are replaced before anything is shortened."""
    msg = _short(redact_text(str(err["msg"]), secrets))
    if err["type"] == "missing":
        return "required field is missing"
    if err["type"] == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tag = repr(ctx.get("tag")) if echo else "(the value is not shown: it is a secret)"
        return f"unknown value {tag}; expected one of {ctx.get('expected_tags')}"
    if err["type"] == "union_tag_not_found":
        return f"missing discriminator field; {msg}"
    given = err.get("input")
    if given is None or isinstance(given, (dict, list)):
        return msg
    return f"{msg} (got {_echo(given)})" if echo else f"{msg} (the value is not shown: it is a secret)"


def validate(parsed: ParsedYaml, model: type[BaseModel], strict: bool) -> BaseModel | None:
    """Validate parsed YAML against ``model``; appends issues to ``parsed`` and returns None on failure."""
    if parsed.issues:
        return None
    try:
        obj = model.model_validate(_plain(parsed.data))
    except ValidationError as exc:
        for err in exc.errors():
            # discriminated unions insert the tag into the location: drop it so the path is the YAML path
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in FEED_KINDS))
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc += (str(err.get("ctx", {}).get("discriminator", "kind")).strip("'\""),)
            parsed.issues.append(
                MetadataIssue(str(parsed.path), line_of(parsed.data, loc), _dotted(loc),
                              _describe(err, parsed.may_echo(loc), redactable(parsed.env_values)))
            )
        return None
    if strict:
        for loc in unknown_keys(obj, ()):
            parsed.issues.append(
                MetadataIssue(str(parsed.path), line_of(parsed.data, loc), _dotted(loc),
                              f"unknown key{did_you_mean(obj, loc)} (strict mode rejects keys the schema "
                              "does not define)")
            )
        if parsed.issues:
            return None
    return obj


def did_you_mean(root: BaseModel, loc: tuple) -> str:
    """``"; did you mean 'password'?"`` for an unknown key close to a field of its model, else ``""``."""
    node: Any = root
    for part in loc[:-1]:
        if isinstance(node, BaseModel):
            fields = {info.alias or name: name for name, info in type(node).model_fields.items()}
            node = getattr(node, fields.get(part, part), None) if part in fields else (node.model_extra or {}).get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return ""
    if not isinstance(node, BaseModel):
        return ""
    names = [info.alias or name for name, info in type(node).model_fields.items()]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown_keys(obj: Any, loc: tuple) -> list[tuple]:
    """Locations of keys that were accepted as extras (models allow extras; strict mode reports them)."""
    found: list[tuple] = []
    if isinstance(obj, BaseModel):
        for key in (obj.model_extra or {}):
            found.append(loc + (key,))
        for name, info in type(obj).model_fields.items():
            found.extend(unknown_keys(getattr(obj, name), loc + (info.alias or name,)))
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            found.extend(unknown_keys(item, loc + (i,)))
    return found


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node
