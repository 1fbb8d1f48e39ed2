"""Active-learning ML backend for Label Studio."""

__version__ = "0.1.0"
