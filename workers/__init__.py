"""Process entry points: Temporal workers per task queue, and the demo's serving processes."""
