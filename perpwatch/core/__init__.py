"""Bottom layer: settings, the asset map and the table registry; imports nothing of perpwatch."""
