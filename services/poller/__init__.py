"""The poller: turns vendor state into events on the bus.

Each vendor declares its feeds in ``pbxbridge/vendors/<vendor>/feeds.py`` as ``FEEDS``
(``feed.Feed`` declarations); this package owns everything generic: the cursor in KV, the
leases that split feeds between replicas, ordered publishing that only advances the cursor
over acknowledged events, health events, and deadline scheduling.
"""
