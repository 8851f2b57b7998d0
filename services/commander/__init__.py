"""The commander: commands from the bus become vendor calls, each ending in exactly one result.

    worker.py      wiring: a FastStream pull subscriber on the commands stream -> handler
    plan.py        pure: decode a delivery, resolve it to a vendor call or a recordings job
    handler.py     the ledger protocol: at most once, deadlines, retries, one result
    activities.py  the I/O: vendor calls, results, dead letters, jobs
"""
