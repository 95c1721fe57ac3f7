"""twistd plugin: ``twistd -n artifactvault --config config.yml``."""

from twisted.application.service import ServiceMaker

from artifactvault import DESCRIPTION

artifactvault = ServiceMaker("Artifact Vault", "artifactvault.tap", DESCRIPTION, "artifactvault")
