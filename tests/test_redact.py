"""The redactor: static credentials for the process's life, session tokens only while held."""

from __future__ import annotations

import logging

import pytest

from pbxbridge import redact
from pbxbridge.vendors.errors import MalformedReplyError, VendorPermanentError
from pbxbridge.vendors.ucontact import Client, Simulator


async def test_replaced_tokens_are_forgotten_and_memory_stays_bounded() -> None:
    """Twenty re-logins leave only the live session held: a discarded token is no longer kept
    (nor masked), the live one is."""
    before = redact.live_token_count()
    async with Simulator(activity=False) as sim, Client(sim.account(rate_per_second=1000)) as client:
        first = None
        for _ in range(20):
            await client.call("queuesummary")
            first = first or client.token
            sim.expire_tokens()
        live = client.token
        assert redact.live_token_count() - before == 2  # the live token and its Basic pair; not 40
        assert redact.redact(f"new {live}") == f"new {redact.MASK}"
    assert first != live and redact.redact(f"old {first}") == f"old {first}"
    assert redact.live_token_count() == before  # closing the client released its session


def test_a_token_shared_by_two_holders_stays_masked_until_both_release() -> None:
    """Two clients of one account hold the same token: one releasing it keeps it masked."""
    token = "tok-shared-5f2a9c"
    redact.hold_token(token)
    redact.hold_token(token)
    redact.release_token(token)
    assert redact.redact(token) == redact.MASK
    redact.release_token(token)
    assert redact.redact(token) == token


def test_static_secrets_mask_log_records_and_errors(caplog: pytest.LogCaptureFixture) -> None:
    """A registered credential is masked in log lines, error messages and reply excerpts, even
    when the excerpt is cut right after it."""
    secret = "pw-static-8d1e77"
    redact.register_secrets([secret])
    logging.getLogger("test.redact").warning("login with %s failed", secret)
    error = VendorPermanentError(f"vendor said: bad password {secret}")
    malformed = MalformedReplyError("odd reply", excerpt="x" * 190 + secret + "y" * 50)
    assert secret not in caplog.text and redact.MASK in caplog.text
    assert secret not in str(error) and secret not in repr(error.as_dict())
    assert secret[:6] not in malformed.excerpt
    assert malformed.excerpt == "x" * 190 + redact.MASK + "y" * 7
