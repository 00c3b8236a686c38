"""The marts: one SQL file or polars module per table, discovered by transforms/__init__.py."""
