"""Which rung serves a request: the pure policy and its signals, the confidence judge, and the router
that carries a decision out (escalation, fallback, keeping the local answer)."""
