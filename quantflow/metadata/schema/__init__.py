"""Pydantic models of the project metadata (``project_metadata/*.yaml``), one module per section.

``project`` (name, symbols, storage, engines) holds one section per stage: ``ingest``, ``state_engine``,
``label_engine``, ``feature_engine`` (later stages add theirs); ``local`` is ``local.yaml``. Models keep unknown keys as extras so the loader
can report them (warnings, or errors in strict mode and always in local.yaml).
"""

from quantflow.metadata.schema.base import DURATION_RE, NAME_RE, SYMBOL_RE, MetadataModel
from quantflow.metadata.schema.feature_engine import (
    FEATURE_KINDS,
    FeatureConfig,
    FeatureDAG,
    FeatureEngineConfig,
)
from quantflow.metadata.schema.ingest import (
    FEED_KINDS,
    CsvColumnMap,
    CsvFeedConfig,
    CsvFeedParams,
    FeedConfig,
    IngestConfig,
    LobsterFeedConfig,
    LobsterFeedParams,
    PolygonFeedConfig,
    PolygonFeedParams,
    SyntheticFeedConfig,
    SyntheticFeedParams,
    YFinanceFeedConfig,
    YFinanceFeedParams,
)
from quantflow.metadata.schema.label_engine import LABEL_METHODS, LabelEngineConfig, LabelSetConfig
from quantflow.metadata.schema.local import LocalConnections, LocalFile, PostgresConnection, S3Connection
from quantflow.metadata.schema.project import DataProcessingConfig, ProjectConfig, ProjectFile, StorageConfig
from quantflow.metadata.schema.state_engine import (
    BAR_TYPES,
    CALENDAR_EVERY,
    BarTypeConfig,
    LobConfig,
    StateEngineConfig,
    bar_table_name,
)

__all__ = [
    "BAR_TYPES", "CALENDAR_EVERY", "DURATION_RE", "FEED_KINDS", "NAME_RE", "SYMBOL_RE",
    "BarTypeConfig", "CsvColumnMap", "CsvFeedConfig", "CsvFeedParams", "DataProcessingConfig", "FeedConfig",
    "FEATURE_KINDS", "FeatureConfig", "FeatureDAG", "FeatureEngineConfig", "IngestConfig", "LABEL_METHODS",
    "LabelEngineConfig", "LabelSetConfig", "LobConfig", "LobsterFeedConfig",
    "LobsterFeedParams", "LocalConnections", "LocalFile",
    "MetadataModel", "PolygonFeedConfig", "PolygonFeedParams", "PostgresConnection", "ProjectConfig",
    "ProjectFile", "S3Connection", "StateEngineConfig", "StorageConfig", "SyntheticFeedConfig",
    "SyntheticFeedParams", "YFinanceFeedConfig", "YFinanceFeedParams", "bar_table_name",
]
