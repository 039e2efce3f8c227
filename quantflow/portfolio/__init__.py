"""Portfolio stage: predictions -> target weights with riskfolio-lib (see runner.py)."""
