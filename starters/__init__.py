"""The `skyshift` CLI operators use: start, approve, rollback, status, watch, dev, demo."""
