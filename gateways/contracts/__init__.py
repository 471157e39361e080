"""Contracts for integrators: JSON Schemas and an AsyncAPI document generated from the code."""
