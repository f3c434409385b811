"""Commands: digest."""
