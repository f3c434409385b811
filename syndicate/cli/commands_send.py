"""Commands: send and unsubscribe-token."""
