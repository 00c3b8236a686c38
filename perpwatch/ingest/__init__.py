"""Ingest engine: plan -> extract -> land -> parse -> validate -> load, gaps, replay, import, stream capture."""
