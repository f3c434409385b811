"""Commands: inspect."""
