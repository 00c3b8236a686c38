"""perpwatch: self-hosted derivatives-market intelligence pipeline."""

__version__ = "0.1.0"
