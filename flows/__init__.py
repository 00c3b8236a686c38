"""Prefect flows: thin wiring of perpwatch.pipeline functions into tasks."""
