"""Serving: what users read — status, report, alert delivery, PNG rendering, table docs."""
