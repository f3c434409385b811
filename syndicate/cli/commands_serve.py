"""Commands: serve."""
