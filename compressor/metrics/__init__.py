"""Measuring models: evaluation on labelled data, entity metrics, gates, FLOPs, latency, machine facts."""
