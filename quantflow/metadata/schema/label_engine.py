"""The ``project.label_engine`` section: label sets over bar tables (López de Prado, AFML ch. 3-4)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from quantflow.metadata.schema.base import DURATION_RE, NAME_RE, MetadataModel, duration_ns, repeated

LABEL_METHODS = ("triple_barrier", "fixed_horizon", "trend_scanning")


class LabelSetConfig(MetadataModel):
    """One label set: a method over one bar table, its events and its sample weights."""

    name: str = Field(pattern=NAME_RE, description="label set name (the label_set column of cdm_labels)")
    method: Literal[LABEL_METHODS]
    input: str = Field("cdm_bars_daily", pattern=r"^cdm_\w+$",
                       description="bar table: cdm_bars_daily or a state-engine bar table (cdm_<type>_..._bars)")
    events: Literal["all", "cusum"] = Field("all", description="every bar, or the bars a symmetric CUSUM "
                                            "filter on log returns picks")
    cusum_threshold: float = Field(2.0, gt=0, description="CUSUM threshold: a multiple of the volatility, or "
                                   "a log return with cusum_scale fixed")
    cusum_scale: Literal["volatility", "fixed"] = "volatility"
    volatility_span: int = Field(100, ge=2, description="EWM span (bars) of the volatility of one-bar log returns")
    volatility_min_bars: int = Field(20, ge=2, description="returns needed before the volatility is defined")
    # triple barrier
    target: Literal["volatility", "fixed"] = Field("volatility", description="triple barrier: the unit of "
                                                   "pt_sl: the volatility at the event, or target_value")
    target_value: float = Field(0.01, gt=0)
    pt_sl: tuple[float, float] = Field((1.0, 1.0), description="profit-taking and stop-loss multiples of the "
                                       "target (0 disables that barrier)")
    vertical_bars: int | None = Field(10, ge=1, description="vertical barrier: bars after the event")
    vertical_duration: str | None = Field(None, pattern=DURATION_RE, description="vertical barrier: time "
                                          "after the event (e.g. 1h, 5d); replaces vertical_bars")
    min_ret: float = Field(0.0, ge=0, description="events whose target is not above this are dropped")
    use_high_low: bool = Field(False, description="barriers touched by bar highs and lows (both in one bar: "
                               "the stop loss counts), not only closes")
    side: Literal["long", "short", "sma_crossover"] = Field("long", description="primary side of the bet")
    sma_fast: int = Field(10, ge=1)
    sma_slow: int = Field(50, ge=2)
    meta_labeling: bool = Field(False, description="label 1 when the primary side's bet made money, else 0")
    # fixed horizon
    horizon: int = Field(5, ge=1, description="fixed horizon: bars ahead")
    threshold: float = Field(0.0, ge=0, description="fixed horizon: |return| above this for a +1/-1 label")
    threshold_scale: Literal["fixed", "volatility"] = "fixed"
    # trend scanning
    windows: tuple[int, int, int] = Field((5, 20, 1), description="trend scanning: min, max, step of the "
                                          "forward windows (bars)")
    # sample weights
    time_decay: float = Field(1.0, gt=-1, le=1, description="AFML time decay: weight of the oldest event "
                              "(1: none; negative: the oldest share gets 0)")
    sample_weight: Literal["uniqueness", "return_attribution"] = Field(
        "uniqueness", description="the weight column: average uniqueness or return attribution, times time decay")

    @model_validator(mode="after")
    def _consistent(self) -> LabelSetConfig:
        if self.meta_labeling and self.side != "sma_crossover":
            raise ValueError("meta_labeling needs a primary model: side: sma_crossover")
        if self.side == "sma_crossover" and self.sma_fast >= self.sma_slow:
            raise ValueError("sma_fast must be shorter than sma_slow")
        lo, hi, step = self.windows
        if not 3 <= lo <= hi or step < 1:
            raise ValueError("windows must be [min, max, step] with 3 <= min <= max and step >= 1")
        if self.pt_sl[0] < 0 or self.pt_sl[1] < 0:
            raise ValueError("pt_sl multiples must be >= 0")
        return self

    @property
    def vertical_ns(self) -> int:
        return duration_ns(self.vertical_duration) if self.vertical_duration else 0


class LabelEngineConfig(MetadataModel):
    """Labels for the models stage, written to ``cdm_labels`` (one row per event and label set)."""

    labels: list[LabelSetConfig] = Field(min_length=1)

    @field_validator("labels")
    @classmethod
    def _distinct_names(cls, labels: list[LabelSetConfig]) -> list[LabelSetConfig]:
        dupes = repeated([s.name for s in labels])
        if dupes:
            raise ValueError(f"label set names must be distinct: {', '.join(dupes)}")
        return labels
