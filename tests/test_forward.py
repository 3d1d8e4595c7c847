"""The gateway's forwarder against raw upstream answers it did not write: interim 1xx, chunked
bodies, HEAD, 204, hop-by-hop headers, idle connections closed by the replica, garbage."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from serdab.serve.forward import UnforwardableRequest, UpstreamError, UpstreamPool, answer_headers


def _serve(answers: list[bytes], *, close_after: bool = False) -> Callable[..., object]:
    """An upstream that reads one request head (and its Content-Length body) per answer it writes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            await reader.readexactly(length)
            writer.write(answer)
            await writer.drain()
            if close_after:
                break
        writer.close()

    return handle


async def _with_upstream(handle, body: Callable[[UpstreamPool], object]):
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(("127.0.0.1", port))
    try:
        return await body(pool)
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


def _run(handle, method="POST", target="/v2/models/m/infer", body=b"{}", times=1):
    async def go(pool):
        return [
            await pool.request(method, target, [(b"content-type", b"application/json")], body, 5) for _ in range(times)
        ]

    return asyncio.run(_with_upstream(handle, go))


def test_interim_answers_are_skipped_and_the_final_one_returned():
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    [(status, headers, body)] = _run(_serve([answer]))
    assert (status, body) == (200, b"ok")
    assert (b"content-length", b"2") not in headers  # the gateway's server frames its own answer


def test_a_chunked_answer_is_decoded_and_the_connection_reused():
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n"
    answers = _run(_serve([chunked, chunked]), times=2)
    assert [(s, b) for s, _, b in answers] == [(200, b"abcde")] * 2
    assert answers[0][1] == [(b"x-a", b"1")]  # transfer-encoding is this hop's, not the client's


def test_head_keeps_its_length_and_has_no_body_and_204_has_no_body():
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    [(status, headers, body)] = _run(_serve([head]), method="HEAD", body=b"")
    assert (status, body, (b"content-length", b"1234") in headers) == (200, b"", True)
    [(status, _, body)] = _run(_serve([no_content]))
    assert (status, body) == (204, b"")


def test_headers_the_replica_names_in_connection_are_not_handed_on():
    answer = (
        b"HTTP/1.1 200 OK\r\nconnection: x-secret, keep-alive\r\nx-secret: 1\r\n"
        b"keep-alive: timeout=5\r\nx-kept: 2\r\ncontent-length: 0\r\n\r\n"
    )
    [(_, headers, _)] = _run(_serve([answer]))
    assert headers == [(b"x-kept", b"2")]


def test_an_answer_without_length_reads_to_the_close():
    [(status, _, body)] = _run(_serve([b"HTTP/1.1 200 OK\r\n\r\nuntil the end"], close_after=True))
    assert (status, body) == (200, b"until the end")


def test_an_idle_connection_closed_by_the_replica_is_retried_once_on_a_fresh_one():
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    answers = _run(_serve([ok], close_after=True), times=3)  # each connection answers once, then closes
    assert [b for _, _, b in answers] == [b"ok"] * 3


@pytest.mark.parametrize(
    "answer",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",  # closed mid-body
        b"HTTP/1.1 2000 OK\r\n\r\n",
    ],
)
def test_a_broken_answer_is_an_upstream_error(answer):
    with pytest.raises(UpstreamError):
        _run(_serve([answer], close_after=True))


def test_a_refused_connection_is_an_upstream_error():
    async def go():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        await UpstreamPool(("127.0.0.1", port)).request("GET", "/", [], b"", 5)

    with pytest.raises(UpstreamError):
        asyncio.run(go())


def test_a_request_that_is_not_valid_http_is_refused_before_it_is_sent():
    with pytest.raises(UnforwardableRequest):
        _run(_serve([]), target="/a b")


def test_answer_headers_are_a_pure_rule():
    given = [(b"connection", b"close, X-Hop"), (b"x-hop", b"1"), (b"content-length", b"3"), (b"date", b"d")]
    assert answer_headers(given, head_request=False) == [(b"date", b"d")]
    assert answer_headers(given, head_request=True) == [(b"content-length", b"3"), (b"date", b"d")]
