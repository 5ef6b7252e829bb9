"""What happened and what it cost: per-request cost, the stats window, Prometheus metrics, logs, reports."""
