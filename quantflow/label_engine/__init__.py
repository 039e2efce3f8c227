"""Label engine: López de Prado labels over bar tables (triple barrier with CUSUM events and meta-labeling,
fixed horizon, trend scanning) with AFML ch. 4 sample weights, written to ``cdm_labels``. The training-set
weights built from them (``training_weights``) live in core, ``quantflow.compute.sample_weights``, because the
models stage computes them on every training fold."""

from quantflow.label_engine.engine import LABEL_SCHEMA, label_bars

__all__ = ["LABEL_SCHEMA", "label_bars"]
