"""The pollers' shared aiohttp-backed transport behaves as httpx's own under the vendor client:
the same errors for a refused connection and a reply too slow, and one client closing leaves
it to the others. The client's shortcuts to httpx's requests build what httpx builds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from pbxbridge.bus.embedded import free_port
from pbxbridge.vendors.client import SharedTransport, default_transport
from pbxbridge.vendors.errors import VendorTimeout, VendorTransientError
from pbxbridge.vendors.swan import Client, Simulator

PROBE, PARAMS = "getUserStatus", {"extension": "200"}


@pytest.fixture
async def pool() -> AsyncIterator[httpx.AsyncBaseTransport]:
    """The one pool the clients share; closed only after all of them."""
    transport = default_transport()
    yield transport
    await transport.aclose()


async def test_a_client_closing_leaves_the_shared_pool_to_the_others(pool: httpx.AsyncBaseTransport) -> None:
    async with Simulator(activity=False) as sim:
        first, second = (Client(sim.account(), transport=SharedTransport(pool)) for _ in range(2))
        await first.call(PROBE, PARAMS)
        await first.aclose()
        await second.call(PROBE, PARAMS)
        await second.aclose()
    assert [outcome for op, outcome in sim.requests if op == PROBE] == ["ok", "ok"]


async def test_a_refused_connection_is_unreachable_not_a_timeout(pool: httpx.AsyncBaseTransport) -> None:
    """A timeout may mean the vendor acted; a refused connection means it never heard us."""
    async with Simulator(activity=False) as sim:
        account = sim.account().model_copy(update={"base_url": f"http://127.0.0.1:{free_port()}"})
    async with Client(account, transport=SharedTransport(pool)) as client:
        with pytest.raises(VendorTransientError, match="cannot reach vendor") as caught:
            await client.call(PROBE, PARAMS)
    assert not isinstance(caught.value, VendorTimeout)


async def test_a_reply_too_slow_is_a_timeout(pool: httpx.AsyncBaseTransport) -> None:
    async with Simulator(activity=False) as sim:
        sim.faults.trickle_rate, sim.faults.trickle_interval = 1.0, 0.1
        async with Client(sim.account(timeout=0.5), transport=SharedTransport(pool)) as client:
            with pytest.raises(VendorTimeout):
                await client.call(PROBE, PARAMS)


def test_query_url_without_parsing_is_the_parsed_url() -> None:
    """``with_query`` (a parsed base URL given a query without parsing it again) builds the URL
    httpx itself would parse, for every kind of value a query can carry."""
    import httpx

    from pbxbridge.vendors.client import _with_query_fast, _with_query_parsing, with_query

    assert with_query is _with_query_fast  # the fast path is in use with this httpx
    for base in ("http://127.0.0.1:8080/GetQueueRealTime", "https://h.example/a%20b/ivr2/Op", "http://[::1]:9/x"):
        for query in ({"queuePath": "ivr2:/5", "token": "123:pa ss+w/rd"},
                      {"s": "é ü 日本 \U0001f600 %41 %zz &=?#", "n": 0, "b": False, "f": 2.5, "none": None, "e": ""},
                      {"k y": "v", "a&b": "c=d"}, {"long": "é x/" * 40, "short": "é x/"}):
            fast, parsed = _with_query_fast(httpx.URL(base), query), _with_query_parsing(httpx.URL(base), query)
            assert str(fast) == str(parsed) and fast == parsed
            assert (fast.raw_path, fast.query, fast.host, fast.port) == (parsed.raw_path, parsed.query, parsed.host, parsed.port)


def test_requests_built_without_merging_are_httpx_requests() -> None:
    """``RequestBuilder`` makes the request the client's ``build_request`` makes (method, URL,
    headers in order, body, timeout), with and without a body, as the credentials change."""
    from pbxbridge.vendors.client import FAST_REQUESTS, RequestBuilder

    assert FAST_REQUESTS  # the shortcut is in use with this httpx
    http = httpx.AsyncClient(base_url="http://127.0.0.1:8080/api/", headers={"X-Agent": "pbx"}, timeout=4)
    builder = RequestBuilder(http)
    url = http.build_request("GET", "Op?a=%C3%A9").url
    for token in ("one", "two", "one", *(f"renewed-{n}" for n in range(20))):
        for method, body in (("GET", {}), ("DELETE", {}), ("POST", {}), ("POST", {"json": {"to": "+972 3"}}),
                             ("PUT", {"data": {"f": "v w"}})):
            headers = {"Authorization": f"bearer {token}"}
            ours, httpx_own = builder.build(method, url, headers=headers, **body), http.build_request(method, url, headers=headers, **body)
            assert (ours.method, ours.url, ours.headers.raw, ours.content, ours.extensions) == (
                httpx_own.method, httpx_own.url, httpx_own.headers.raw, httpx_own.content, httpx_own.extensions)
    assert len(builder._headers) <= RequestBuilder._KEPT  # renewed sessions do not pile up


async def test_responses_held_as_read_are_httpx_responses() -> None:
    """``read_response`` gives what ``httpx.Response(content=...)`` gives, read again or not."""
    from pbxbridge.vendors.client import FAST_RESPONSES, read_response

    assert FAST_RESPONSES  # the shortcut is in use with this httpx
    request = httpx.Request("GET", "http://127.0.0.1:8080/api/Op")
    for headers, body in (([("Content-Type", "application/json; charset=utf-8")], '{"to": "+972 3 é"}'.encode()),
                          ([("Content-Type", "text/plain")], b""), ([], b"\xff\xfe binary")):
        ours = read_response(200, headers, body, request, {})
        httpx_own = httpx.Response(200, headers=headers, content=body, request=request)
        assert (ours.headers.raw, ours.content, ours.text, ours.encoding, await ours.aread(),
                [chunk async for chunk in ours.aiter_bytes()]) == (
            httpx_own.headers.raw, httpx_own.content, httpx_own.text, httpx_own.encoding, await httpx_own.aread(),
            [chunk async for chunk in httpx_own.aiter_bytes()])
        if body.startswith(b"{"):
            assert ours.json() == httpx_own.json()
