"""Artifact Vault: a pull-through caching proxy for build artifacts."""

__version__ = "0.1.0"
