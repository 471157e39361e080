"""Hypothesis state machines for the aggregates."""
