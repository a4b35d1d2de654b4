"""livepush: a real-time push server for live blogs."""

__version__ = "0.1.0"
