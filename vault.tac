# twistd -ny vault.tac  -- runs Artifact Vault with the config named by
# $ARTIFACTVAULT_CONFIG (the embedded default when unset).
import os
import sys

from twisted.application.service import Application

from artifactvault import config as configmod
from artifactvault.cache.store import CacheInUse
from artifactvault.startup import CacheDirUnusable
from artifactvault.service import build
from artifactvault.tap import load_config

try:
    _config = load_config(os.environ.get("ARTIFACTVAULT_CONFIG") or None)
except configmod.ConfigError as e:
    sys.exit(f"artifactvault: {e}")

application = Application("artifactvault")
try:
    build(_config)[0].setServiceParent(application)
except (CacheInUse, CacheDirUnusable) as e:
    sys.exit(f"artifactvault: {e}")
