"""The commander the FastStream way: ``faststream run services.commander.app:app``."""

from pbxbridge.service import faststream_app
from services.commander.worker import serve

app = faststream_app("commander", serve)
