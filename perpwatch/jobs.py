"""Jobs: what a command or a flow runs — ingest, backfill, build, publish, deliver — as plain functions."""
