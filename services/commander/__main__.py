"""``python -m services.commander [config.toml]``: the commander alone, configured from ``PBX_*``."""

from pbxbridge.service import main
from services.commander.worker import serve

if __name__ == "__main__":
    main("commander", serve)
