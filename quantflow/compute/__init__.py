"""Core compute: the stage contract (``stage``), executors (local, Ray), date ranges, the order book."""
