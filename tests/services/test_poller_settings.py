"""Settings reach the bus: a restart with new settings updates the buckets and streams it finds."""

from __future__ import annotations

from pbxbridge.bus import open_bus
from pbxbridge.config import Settings


async def test_restart_with_new_settings_updates_existing_buckets_and_streams(settings: Settings) -> None:
    """A new lease TTL, ledger TTL and events retention land on the buckets and stream created before."""
    async with open_bus(settings.model_copy(update={"lease_ttl": 15}), name="test-settings-old") as bus:
        leases = await bus.js.key_value(bus.names.leases)
        assert (await leases.status()).ttl == 15
    changed = settings.model_copy(update={"lease_ttl": 6, "results_max_age": 3600, "events_max_age": 7200})
    async with open_bus(changed, name="test-settings-new") as bus:
        leases = await bus.js.key_value(bus.names.leases)
        ledger = await bus.js.key_value(bus.names.ledger)
        assert (await leases.status()).ttl == 6
        assert (await ledger.status()).ttl == 3600
        assert (await bus.js.stream_info(bus.names.events)).config.max_age == 7200
        # The TTL is what removes a dead replica's lease: the bucket's stream itself must say so.
        backing = await bus.js.stream_info(f"KV_{bus.names.leases}")
        assert backing.config.max_age == 6 and backing.config.duplicate_window <= 6
