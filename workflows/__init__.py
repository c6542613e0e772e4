"""Deterministic orchestration: plans, the migration lifecycle, cutover, sync and compensation.

Nothing here performs I/O, reads clocks or draws random numbers; every side effect is an activity.
"""
