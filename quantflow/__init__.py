"""QuantFlow."""
