"""The outbound-URL guard (SSRF) and its sender. No traffic leaves this machine: refused
forms are resolved locally (numeric hosts, /etc/hosts) or by a fake resolver, and the
sender only ever talks to a server on 127.0.0.1."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from safety.outbound import (CheckedTarget, OutboundError, OutboundRefused, UnresolvableHost, check_url,
                             forbidden_reason, post)

FORBIDDEN = [
    # IPv4: loopback in every spelling the resolver (and curl) accepts
    "http://127.0.0.1/", "http://127.0.0.2:8080/hook", "http://2130706433/", "http://0x7f000001/",
    "http://017700000001/", "http://127.1/", "http://0x7f.1/", "http://0177.0.0.1/", "http://localhost/",
    "http://LOCALHOST:9000/x",
    # IPv4: private, link-local (cloud metadata), unspecified, multicast, reserved, shared (CGNAT), benchmark
    "http://10.0.0.1/", "http://172.16.5.4/", "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data/",
    "http://0.0.0.0/", "http://0/", "http://224.0.0.1/", "http://240.0.0.1/", "http://255.255.255.255/",
    "http://100.64.0.1/", "http://198.18.0.1/", "http://192.0.2.1/",
    # IPv6: loopback, unspecified, link-local, unique-local, multicast, site-local
    "http://[::1]/", "http://[::]/", "http://[fe80::1]/", "http://[fc00::1]/", "http://[fd12:3456::1]/",
    "http://[ff02::1]/", "http://[fec0::1]/",
    # IPv6 forms that carry an IPv4 address: mapped, compatible, 6to4, NAT64, Teredo
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/", "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:169.254.169.254]/", "http://[::127.0.0.1]/", "http://[2002:7f00:1::]/",
    "http://[2002:a9fe:a9fe::1]/", "http://[64:ff9b::7f00:1]/", "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",  # Teredo, client 127.0.0.1
    "https://127.0.0.1:8443/secure",
]


@pytest.mark.parametrize("url", FORBIDDEN)
def test_forbidden_addresses_are_refused(url):
    with pytest.raises(OutboundRefused) as err:
        check_url(url, allow_private=False)
    message = str(err.value)
    assert "refused" in message and "PIXELMILL_WEBHOOK_ALLOW_PRIVATE" in message


@pytest.mark.parametrize("url", ["http://2130706433/", "http://0x7f.1/", "http://017700000001/", "http://127.1/"])
def test_numeric_hosts_resolve_to_what_they_mean(url):
    assert check_url(url, allow_private=True).addresses == ("127.0.0.1",)


@pytest.mark.parametrize("url", FORBIDDEN)
def test_the_setting_allows_them(url):
    target = check_url(url, allow_private=True)
    assert target.addresses


@pytest.mark.parametrize(("url", "address"), [
    ("http://93.184.216.34/hook", "93.184.216.34"),
    ("https://8.8.8.8:8443/x?y=1", "8.8.8.8"),
    ("http://[2606:4700:4700::1111]/", "2606:4700:4700::1111"),
    ("http://[::ffff:93.184.216.34]/", "::ffff:93.184.216.34"),
])
def test_public_literals_pass_without_any_connection(url, address):
    target = check_url(url, allow_private=False)
    assert target.addresses == (address,)


def test_a_name_is_refused_when_any_address_it_resolves_to_is_forbidden():
    def resolve(host, port):
        return {"hooks.example": ["93.184.216.34", "10.1.2.3"], "good.example": ["93.184.216.34"]}[host]

    with pytest.raises(OutboundRefused, match=r"hooks\.example \(10\.1\.2\.3\) is a private address"):
        check_url("https://hooks.example/in", allow_private=False, resolve=resolve)
    target = check_url("https://good.example/in?a=1", allow_private=False, resolve=resolve)
    assert (target.host, target.port, target.path, target.addresses) == ("good.example", 443, "/in?a=1",
                                                                          ("93.184.216.34",))


def test_rebinding_to_a_mapped_loopback_is_refused():
    with pytest.raises(OutboundRefused, match="loopback"):
        check_url("http://rebind.example/", allow_private=False, resolve=lambda h, p: ["::ffff:127.0.0.1"])


@pytest.mark.parametrize(("url", "fragment"), [
    ("", "empty"),
    ("ftp://93.184.216.34/", "only http and https"),
    ("file:///etc/passwd", "only http and https"),
    ("gopher://93.184.216.34:70/", "only http and https"),
    ("http://user:pw@93.184.216.34/", "credentials"),
    ("http:///nohost", "no host"),
    ("http://93.184.216.34:99999/", "not a valid URL"),
    ("http://" + "a" * 3000 + ".example/", "longer than"),
])
def test_malformed_urls_are_refused(url, fragment):
    with pytest.raises(OutboundRefused, match=fragment):
        check_url(url, allow_private=False)


def test_an_unresolvable_name_is_its_own_refusal():
    def resolve(host, port):
        raise OSError("Name or service not known")

    with pytest.raises(UnresolvableHost, match="could not be resolved"):
        check_url("http://nowhere.invalid/", allow_private=False, resolve=resolve)


def test_forbidden_reason_reads_embedded_ipv4():
    import ipaddress

    assert "loopback" in forbidden_reason(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert "link-local" in forbidden_reason(ipaddress.ip_address("64:ff9b::a9fe:a9fe"))
    assert forbidden_reason(ipaddress.ip_address("93.184.216.34")) is None


# --- the sender, against a server on loopback --------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("content-length", 0))
        body = self.rfile.read(length)
        _Handler.seen.append({"path": self.path, "host": self.headers.get("host"), "body": body})
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/big":
            payload = b"x" * 200_000
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        elif self.path == "/slow":
            time.sleep(1.5)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(204)
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def _target(port: int, path: str, *, host: str = "hooks.example") -> CheckedTarget:
    # A name that does not resolve anywhere: proves the sender connects to the checked address only.
    return check_url(f"http://{host}:{port}{path}", allow_private=True, resolve=lambda h, p: ["127.0.0.1"])


def test_post_connects_to_the_checked_address_with_the_original_host_header(server):
    response = post(_target(server, "/in?x=1"), body=b'{"a":1}', headers={"content-type": "application/json"},
                    timeout_s=5)
    assert response.status == 204 and response.address == "127.0.0.1"
    assert _Handler.seen[-1] == {"path": "/in?x=1", "host": f"hooks.example:{server}", "body": b'{"a":1}'}


def test_redirects_are_not_followed(server):
    before = len(_Handler.seen)
    response = post(_target(server, "/redirect"), body=b"{}", headers={}, timeout_s=5)
    assert response.status == 302 and response.header("location").endswith("/elsewhere")
    assert len(_Handler.seen) == before + 1


def test_the_response_read_is_capped(server):
    response = post(_target(server, "/big"), body=b"{}", headers={}, timeout_s=5, max_response_bytes=1000)
    assert response.status == 200 and len(response.body) == 1000 and response.truncated


def test_a_slow_receiver_times_out(server):
    started = time.monotonic()
    with pytest.raises(OutboundError) as err:
        post(_target(server, "/slow"), body=b"{}", headers={}, timeout_s=0.5)
    assert err.value.timeout and time.monotonic() - started < 1.4


def test_a_closed_port_is_a_network_error():
    from stack.redis_server import free_port

    with pytest.raises(OutboundError, match="could not connect"):
        post(_target(free_port(), "/"), body=b"{}", headers={}, timeout_s=2)
