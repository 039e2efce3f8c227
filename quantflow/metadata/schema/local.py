"""``local.yaml``: machine-specific connections and their secrets (never committed; see local.example.yaml).

Secrets are ``SecretStr``: they print as ``**********`` in reprs and errors and are read only where a
connection is opened (``get_secret_value()``). Unknown keys here are always errors, not warnings: a typo
such as ``pasword:`` would otherwise leave the password empty without a word.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import ConfigDict, Field, SecretStr, model_validator

from quantflow.metadata.schema.base import MetadataModel

POSTGRES_SCHEMES = ("postgres", "postgresql", "postgresql+psycopg2")


def parse_postgres_url(url: str) -> dict[str, Any]:
    """``postgresql://user:password@host:port/dbname`` -> connection fields (only those the URL has)."""
    parts = urlsplit(url)
    if parts.scheme not in POSTGRES_SCHEMES:
        raise ValueError("expected a mapping (host, port, user, password, dbname) or a "
                         "postgresql://user:password@host:port/dbname URL")
    fields: dict[str, Any] = {}
    if parts.hostname:
        fields["host"] = parts.hostname
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the postgresql:// URL has an invalid port") from None
    if port:
        fields["port"] = port
    if parts.username:
        fields["user"] = unquote(parts.username)
    if parts.password:
        fields["password"] = unquote(parts.password)
    if parts.path.strip("/"):
        fields["dbname"] = unquote(parts.path.strip("/"))
    return fields


class PostgresConnection(MetadataModel):
    host: str = "localhost"
    port: int = Field(5432, ge=1, le=65535)
    user: str = "postgres"
    password: SecretStr = SecretStr("")
    dbname: str = "quantflow"
    schema_: str = Field("cdm", alias="schema")
    raw_schema: str = "raw"

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _from_url(cls, value: Any) -> Any:
        """``postgres: ${QF_PG_DSN}`` (a URL) is accepted as well as a mapping."""
        return parse_postgres_url(value) if isinstance(value, str) else value


class S3Connection(MetadataModel):
    endpoint_url: str | None = None
    key: SecretStr | None = None
    secret: SecretStr | None = None
    region: str | None = None


class LocalConnections(MetadataModel):
    postgres: PostgresConnection = PostgresConnection()
    s3: S3Connection = S3Connection()


class LocalFile(MetadataModel):
    """``local.yaml``: machine-specific connections; never committed (``local.example.yaml`` is)."""

    local: LocalConnections = LocalConnections()
