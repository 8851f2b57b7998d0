"""The recordings worker the FastStream way: ``faststream run services.recordings.app:app``."""

from pbxbridge.service import faststream_app
from services.recordings.worker import serve

app = faststream_app("recordings", serve)
