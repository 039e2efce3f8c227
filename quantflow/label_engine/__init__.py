"""Label engine: López de Prado labels over bar tables (triple barrier with CUSUM events and meta-labeling,
fixed horizon, trend scanning) with AFML ch. 4 sample weights, written to ``cdm_labels``."""

from quantflow.label_engine.engine import LABEL_SCHEMA, label_bars, time_decay, training_weights

__all__ = ["LABEL_SCHEMA", "label_bars", "time_decay", "training_weights"]
