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


def test_urls_lose_credential_parameters_even_unregistered_and_registered_secrets_anywhere() -> None:
    """For span attributes: a ``token``/``password`` parameter is masked by its name whatever its
    value (a token nobody registered, e.g. another replica's), a registered secret wherever it
    stands; the rest of the URL keeps its encoding."""
    url = "https://www.call2all.co.il/ym/api/GetQueueRealTime?queuePath=ivr2%3A%2F5&token=077313:unregistered-pw"
    assert redact.redact_url(url) == "https://www.call2all.co.il/ym/api/GetQueueRealTime?queuePath=ivr2%3A%2F5&token=***"
    assert redact.redact_url("https://x/ym/api/Login?username=077&Password=hunter2-abc") == "https://x/ym/api/Login?username=077&Password=***"
    redact.register_secrets(["registered-key-123"])
    assert redact.redact_url("https://x/files/registered-key-123/a.wav?id=1") == "https://x/files/***/a.wav?id=1"
    assert redact.redact_url("https://x/a?b=c&d") == "https://x/a?b=c&d"
