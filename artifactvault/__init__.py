"""Artifact Vault: a pull-through caching proxy for build artifacts."""

__version__ = "0.1.0"

#: What the daemon is, in one line (twistd's plugin list and --help say it).
DESCRIPTION = ("A pull-through caching proxy for build artifacts: PyPI, npm, OCI registries, "
               "Debian/Ubuntu apt repositories and plain HTTP.")
