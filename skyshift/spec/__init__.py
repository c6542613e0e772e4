"""The plan's shared types: what every layer (starters, workflows, activities, workers) may import.

Plan data that more than one layer speaks — an endpoint pair and its shadow settings, the metrics
provider, the traffic router — lives here, below the activities that act on it, the way
argo-rollouts keeps its types in `pkg/apis`. A module here imports pydantic and other modules here,
nothing else: importing it is cheap and can never close an import cycle.
"""
