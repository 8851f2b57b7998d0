"""``python -m services.recordings [config.toml]``: the recordings worker alone, configured from ``PBX_*``."""

from pbxbridge.service import main
from services.recordings.worker import serve

if __name__ == "__main__":
    main("recordings", serve)
