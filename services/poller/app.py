"""The poller the FastStream way: ``faststream run services.poller.app:app``."""

from pbxbridge.service import faststream_app
from services.poller.worker import serve

app = faststream_app("poller", serve)
