"""The package version (one place: the root re-exports it, model manifests record it)."""

__version__ = "0.1.0"
