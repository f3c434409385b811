"""Commands: build."""
