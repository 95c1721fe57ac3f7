"""twistd plugin: ``twistd -n artifactvault --config config.yml``."""

from twisted.application.service import ServiceMaker

artifactvault = ServiceMaker(
    "Artifact Vault",
    "artifactvault.tap",
    "A pull-through caching proxy for build artifacts (PyPI, OCI registries, HTTP).",
    "artifactvault",
)
