"""Reports stage: the plot, stress-test and risk reports of a backtested strategy (see runner.py)."""
