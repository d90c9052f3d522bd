"""sltestbed: how few bits can cross the client/server cut of a split model, and at what cost."""

__version__ = "0.1.0"
