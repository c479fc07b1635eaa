"""Fetching an input image by URL (safety.fetch) against a TLS server on loopback with a certificate
made here: certificates verified, https only, redirects followed at most 3 times with the guard at
every hop (every forbidden spelling refused after one), the byte cap enforced while reading."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from safety.fetch import FetchFailed, check_input_url, fetch
from safety.outbound import OutboundRefused
from tests.image_server import ImageServer, body, endless, make_cert, redirect, slow
from tests.unit.test_outbound import FORBIDDEN

PNG = b"\x89PNG\r\n\x1a\n" + b"pretend" * 10
CAP = 1024 * 1024


def as_https(url: str) -> str:
    return "https://" + url.split("://", 1)[1]


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def trust(cert) -> ssl.SSLContext:
    """What the system store gives in production, with the test's certificate as the only root."""
    return ssl.create_default_context(cafile=str(cert[0]))


@pytest.fixture(scope="module")
def server(cert) -> Iterator[ImageServer]:
    srv = ImageServer(tls=cert)
    srv.routes.update({
        "/img.png": body(PNG),
        "/hop1": redirect("/hop2", 301), "/hop2": redirect("/hop3", 307), "/hop3": redirect("/img.png", 308),
        "/hop0": redirect("/hop1"),  # four redirects: one too many
        "/big-declared": endless(declare=50 * 1024 * 1024),
        "/big-chunked": endless(),
        "/slow": slow(3),
        "/gone": body(b"gone", content_type="text/plain", status=410),
        "/http": redirect("http://localhost/img.png"),
    })
    yield srv
    srv.close()


def get(server: ImageServer, path: str, trust: ssl.SSLContext, **kwargs):
    options = {"allow_private": True, "max_bytes": CAP, "timeout_s": 5, "ssl_context": trust, **kwargs}
    return fetch(server.url(path), **options)


def test_an_image_is_fetched_over_verified_tls(server, trust):
    fetched = get(server, "/img.png", trust)
    assert fetched.data == PNG and fetched.content_type == "image/png" and fetched.redirects == ()


def test_a_certificate_the_trust_store_does_not_know_is_refused(server):
    with pytest.raises(FetchFailed) as err:  # the default context: the system's roots only
        fetch(server.url("/img.png"), allow_private=True, max_bytes=CAP, timeout_s=5)
    assert err.value.code == "input_unreachable" and "certificate verify failed" in str(err.value)


def test_up_to_three_redirects_are_followed(server, trust):
    fetched = get(server, "/hop1", trust)
    assert fetched.data == PNG and fetched.url.endswith("/img.png") and len(fetched.redirects) == 3


def test_a_fourth_redirect_is_refused(server, trust):
    with pytest.raises(FetchFailed, match="redirected more than 3 times") as err:
        get(server, "/hop0", trust)
    assert err.value.code == "input_unreachable"


def test_a_redirect_to_http_is_refused(server, trust):
    with pytest.raises(FetchFailed, match="https only") as err:
        get(server, "/http", trust)
    assert err.value.code == "input_unreachable"


@pytest.mark.parametrize("url", FORBIDDEN)
def test_every_forbidden_spelling_is_refused_as_an_input_url(url):
    with pytest.raises(OutboundRefused) as err:
        check_input_url(as_https(url), allow_private=False)
    assert "refused" in str(err.value) and "PIXELMILL_INPUT_ALLOW_PRIVATE" in str(err.value)


@pytest.mark.parametrize("url", FORBIDDEN)
def test_every_forbidden_spelling_is_refused_after_a_redirect(server, trust, url):
    """The origin is let through by the test (it is on loopback itself); its redirect target meets
    the real guard with private addresses refused."""
    origin = f"localhost:{server.port}"
    path = f"/to-{abs(hash(url))}"
    server.routes[path] = redirect(as_https(url))

    def check(hop: str):
        if hop.startswith(f"https://{origin}/"):
            return check_input_url(hop, allow_private=True)
        return check_input_url(hop, allow_private=False)

    hits = len(server.hits)
    with pytest.raises(FetchFailed) as err:
        get(server, path, trust, check=check)
    assert err.value.code == "input_unreachable"
    assert "after 1 redirect(s)" in str(err.value) and "PIXELMILL_INPUT_ALLOW_PRIVATE" in str(err.value)
    assert server.hits[hits:] == [path]  # nothing was requested from the forbidden address


@pytest.mark.parametrize("url", ["http://93.184.216.34/a.png", "ftp://93.184.216.34/a.png",
                                 "https://user:pw@93.184.216.34/a.png", "file:///etc/passwd", ""])
def test_only_plain_https_urls_are_taken(url):
    with pytest.raises(OutboundRefused):
        check_input_url(url, allow_private=False)


def test_a_declared_length_over_the_cap_is_refused_before_reading(server, trust):
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="52428800 bytes") as err:
        get(server, "/big-declared", trust)
    assert err.value.code == "input_too_large" and time.monotonic() - started < 3


def test_a_body_without_length_is_cut_off_at_the_cap(server, trust):
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="more than 1048576 bytes") as err:
        get(server, "/big-chunked", trust)
    assert err.value.code == "input_too_large" and time.monotonic() - started < 3


def test_the_whole_fetch_has_a_deadline(server, trust):
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="no answer") as err:
        get(server, "/slow", trust, timeout_s=0.5)
    assert err.value.code == "input_unreachable" and time.monotonic() - started < 2


def test_an_error_status_is_unreachable(server, trust):
    with pytest.raises(FetchFailed, match="HTTP 410") as err:
        get(server, "/gone", trust)
    assert err.value.code == "input_unreachable"


def test_the_default_check_refuses_loopback_itself(server, trust):
    with pytest.raises(FetchFailed, match="loopback") as err:
        fetch(server.url("/img.png"), allow_private=False, max_bytes=CAP, timeout_s=5, ssl_context=trust)
    assert err.value.code == "input_unreachable"


def test_a_resolver_is_used_for_every_hop(server, trust):
    """A public-looking name pinned to loopback (allowed here) is connected to at the checked address."""
    seen = []

    def resolve(host, port):
        seen.append(host)
        return ["127.0.0.1"]

    fetched = fetch(server.url("/hop3"), allow_private=True, max_bytes=CAP, timeout_s=5, ssl_context=trust,
                    resolve=resolve)
    assert fetched.data == PNG and seen == ["localhost", "localhost"]
