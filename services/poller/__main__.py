"""``python -m services.poller [config.toml]``: the poller alone, configured from ``PBX_*``."""

from pbxbridge.service import main
from services.poller.worker import serve

if __name__ == "__main__":
    main("poller", serve)
