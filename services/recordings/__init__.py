"""The recordings worker: ``recording.fetch`` jobs from the commander, and jobs it makes itself
from ``call.ended`` of accounts with ``archive_recordings``, become archived audio.

    worker.py      wiring: FastStream pull subscribers on the jobs stream -> handler, events -> auto
    handler.py     the protocol: once per call, not-ready retried, one ending, one announcement
    auto.py        the protocol from a call.ended to one job per call and format
    activities.py  the I/O: fetch from the vendor, archive + verify (Object Store), announce, publish a job
    s3_archive.py  the S3 archive (aiobotocore), behind the same interface
    convert.py     PyAV: served audio -> archive format, file to file (long Opus calls in parallel chunks)
    libopus.py     libopus called directly (ctypes) for the Opus chunks; LAME via lameenc for MP3
"""
