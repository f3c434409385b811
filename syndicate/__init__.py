"""syndicate: newsletter and RSS syndication for news article dumps."""

__version__ = "0.1.0"
