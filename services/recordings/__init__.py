"""The recordings worker: ``recording.fetch`` jobs from the commander become archived audio.

    worker.py      wiring: a FastStream pull subscriber on the jobs stream -> handler
    handler.py     the protocol: once per call, not-ready retried, one result, one announcement
    activities.py  the I/O: fetch from the vendor, archive + verify, announce
    convert.py     PyAV: served audio -> archive format
"""
