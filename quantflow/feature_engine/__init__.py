"""Feature engine: features over bar tables (TA-Lib, rolling statistics, cross-sectional transforms,
microstructure measures, Qlib's Alpha158), sharded by symbol and block with exact warm-up; writes ``ft_features``."""
