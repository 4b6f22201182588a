"""vlm_course.fetch: the address classifier on literals, and the fetcher against servers on 127.0.0.1 only.

No test here can reach another machine: every fetch is given `connect=LOOPBACK` (which refuses any
address but 127.0.0.1 / ::1 before a socket exists) and `resolve=NO_DNS` (only 'localhost'), so even a
misclassified address ends in an AssertionError, never in a connection or a DNS query.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from _need import need  # skips outside CI, fails in CI

need("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vlm_course.errors import ImageError, VLMCourseError
from vlm_course.fetch import FetchError, fetch, is_public_address, open_connection, parse_url

CONNECTED: list[str] = []


def LOOPBACK(ip, port, family, deadline):  # noqa: N802 - a constant-like test double
    assert ipaddress.ip_address(ip).is_loopback, f"a test tried to connect to {ip}"
    CONNECTED.append(ip)
    return open_connection(ip, port, family, deadline)


def NO_DNS(host, port, deadline):  # noqa: N802
    assert host == "localhost", f"a test tried to resolve {host!r}"
    return [(socket.AF_INET, "127.0.0.1")]


def get(url, **kw):
    kw.setdefault("timeout", 5)
    kw.setdefault("max_bytes", 10_000)
    return fetch(url, connect=LOOPBACK, resolve=NO_DNS, **kw)


# --------------------------------------------------------------------------- the classifier

PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e",
          "::ffff:8.8.8.8",          # IPv4-mapped public
          "64:ff9b::808:808",        # NAT64 of 8.8.8.8
          "2002:808:808::1"]         # 6to4 of 8.8.8.8
NOT_PUBLIC = [
    "127.0.0.1", "127.255.255.254", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "100.64.0.1",
    "169.254.169.254", "0.0.0.0", "0.1.2.3", "255.255.255.255", "224.0.0.1", "239.255.255.250", "240.0.0.1",
    "192.0.0.8", "192.0.2.1", "198.18.0.1", "198.51.100.7", "203.0.113.9", "192.88.99.1",
    "::", "::1", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1", "fec0::1", "ff02::1", "2001:db8::1",
    "100::1", "3fff::1", "5f00::1", "2001:10::1", "2001:2::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",   # IPv4-mapped
    "::127.0.0.1", "::8.8.8.8", "::a00:1",                             # IPv4-compatible (deprecated)
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::a00:1",          # NAT64 of private addresses
    "64:ff9b:1::a00:1",                                                 # local-use NAT64
    "2002:7f00:1::1", "2002:a00:1::", "2002:a9fe:a9fe::1",              # 6to4 of private addresses
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",                             # Teredo
    "2001:0:7f00:1::",                                                  # Teredo with a loopback server
    "::ffff:0:7f00:1",                                                  # IPv4-translated
]


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses(ip):
    assert is_public_address(ip) is True
    assert is_public_address(ipaddress.ip_address(ip)) is True


@pytest.mark.parametrize("ip", NOT_PUBLIC)
def test_special_addresses_are_not_public(ip):
    assert is_public_address(ip) is False


def test_the_forms_pythons_ipaddress_calls_global_are_refused():
    """The finding: Python's own table calls these forms of 127.0.0.1 global; ours does not."""
    for ip in ("64:ff9b::7f00:1", "2002:7f00:1::1"):
        assert is_public_address(ip) is False


@pytest.mark.parametrize("text", ["localhost", "1.2.3", "::g", "", "8.8.8.8/32"])
def test_not_an_address(text):
    with pytest.raises(ValueError):
        is_public_address(text)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_every_ipv4_agrees_with_its_mapped_and_nat64_forms(n):
    v4 = ipaddress.IPv4Address(n)
    mapped = ipaddress.IPv6Address((0xFFFF << 32) | n)
    nat64 = ipaddress.IPv6Address((0x64FF9B << 96) | n)
    six_to_four = ipaddress.IPv6Address((0x2002 << 112) | (n << 80))
    assert is_public_address(v4) == is_public_address(mapped) == is_public_address(nat64) == is_public_address(six_to_four)
    if not v4.is_global:  # whatever Python's table calls non-global, ours does too
        assert not is_public_address(v4)


# --------------------------------------------------------------------------- URLs

BAD_URLS = ["http://example.org:99999/x.png", "http://example.org:abc/x.png", "http://example.org:-1/x.png",
            "http://[::1/x.png", "http://[zz]/x.png", "http://exa\x00mple.org/x.png", "http://example.org/a\r\nb",
            "http://example.org/a b", "http:///x.png", "ftp://example.org/x", "http://user:pw@example.org/",
            "http://" + "a" * 300 + "/", "http://a..b/", "http://ex\ud800.org/", "http://example.org:0/"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_malformed_urls_are_fetch_errors(url):
    with pytest.raises(FetchError) as info:
        get(url)
    assert isinstance(info.value, VLMCourseError) and isinstance(info.value, ImageError)
    assert "URL" in str(info.value) or "scheme" in str(info.value)
    assert CONNECTED == []  # refused before any connection


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=60) | st.builds(lambda a, b: f"http://{a}/{b}", st.text(max_size=20), st.text(max_size=20)))
def test_any_text_is_a_url_or_a_fetch_error(text):
    """Property: parse_url returns or raises FetchError, nothing else; so does a fetch that may not leave."""
    try:
        parse_url(text)
    except FetchError:
        pass

    def refuse(ip, port, family, deadline):
        raise OSError("tests connect nowhere")

    try:
        fetch(text, timeout=1, connect=refuse, resolve=lambda host, port, deadline: [(socket.AF_INET, "192.0.2.1")],
              allowed=lambda ip: True)
    except FetchError:
        pass


# --------------------------------------------------------------------------- a server on 127.0.0.1


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hosts: list[str] = []

    def log_message(self, *args):
        pass

    def _send(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        Handler.hosts.append(self.headers.get("Host"))
        port = self.server.server_address[1]
        if self.path in ("/ok", "/caf%C3%A9.png?x=%C3%A9"):
            self._send(200, b"hello", [("Content-Type", "image/png")])
        elif self.path == "/redirect-here":
            self._send(302, headers=[("Location", "/ok")])
        elif self.path == "/redirect-to-ipv6-loopback":
            self._send(302, headers=[("Location", f"http://[::1]:{port}/ok")])
        elif self.path == "/redirect-to-nat64":
            self._send(302, headers=[("Location", f"http://[64:ff9b::7f00:1]:{port}/ok")])
        elif self.path == "/redirect-loop":
            self._send(302, headers=[("Location", "/redirect-loop")])
        elif self.path == "/big":
            self._send(200, b"x" * 50_000)
        else:
            self._send(404, b"no")


@pytest.fixture(scope="module")
def site():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _clear():
    CONNECTED.clear()
    yield


def only_this_loopback(ip):
    return ip == "127.0.0.1"


def test_fetch_follows_a_redirect(site):
    url, _ = site
    got = get(url + "/redirect-here", allowed=only_this_loopback)
    assert got.data == b"hello" and got.url.endswith("/ok") and got.content_type == "image/png"
    assert CONNECTED == ["127.0.0.1", "127.0.0.1"]  # one connection a hop, each to the checked address


@pytest.mark.parametrize("path", ["/redirect-to-ipv6-loopback", "/redirect-to-nat64"])
def test_every_redirect_hop_is_checked(site, path):
    url, _ = site
    with pytest.raises(FetchError) as info:
        get(url + path, allowed=only_this_loopback)
    assert info.value.code == "url_not_allowed"
    assert CONNECTED == ["127.0.0.1"]  # the second hop was refused before any connection


def test_default_policy_refuses_loopback_without_connecting(site):
    url, port = site
    for target in (url + "/ok", f"http://localhost:{port}/ok", f"http://[::ffff:127.0.0.1]:{port}/ok",
                   f"http://[64:ff9b::7f00:1]:{port}/ok", f"http://[2002:7f00:1::1]:{port}/ok"):
        with pytest.raises(FetchError) as info:
            get(target)
        assert info.value.code == "url_not_allowed", target
    assert CONNECTED == []


def test_the_name_is_resolved_once_and_the_address_connected_to(site):
    _, port = site
    Handler.hosts.clear()
    assert get(f"http://localhost:{port}/ok", allow_private=True).data == b"hello"
    assert CONNECTED == ["127.0.0.1"]  # the resolved address, not the name
    assert Handler.hosts == [f"localhost:{port}"]  # while the request still names the host


def test_a_non_ascii_path_is_sent_percent_encoded(site):
    url, _ = site
    assert get(url + "/café.png?x=é", allow_private=True).data == b"hello"
    assert get(url + "/caf%C3%A9.png?x=%C3%A9", allow_private=True).data == b"hello"  # escapes kept as they are


def test_redirect_loop_and_errors(site):
    url, _ = site
    with pytest.raises(FetchError, match="redirects more than"):
        get(url + "/redirect-loop", allow_private=True)
    with pytest.raises(FetchError, match="HTTP 404"):
        get(url + "/missing", allow_private=True)
    with pytest.raises(FetchError) as info:
        get(url + "/big", allow_private=True)
    assert info.value.code == "image_too_large"


@pytest.fixture
def trickler():
    """A server that sends its status line one byte at a time, 0.2 s apart (a whole reply takes ~15 s)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: image/png\r\n\r\nhello"

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                for i in range(len(reply)):
                    if stop.wait(0.2):
                        break
                    try:
                        conn.sendall(reply[i:i + 1])
                    except OSError:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/x.png"
    stop.set()
    listener.close()


def test_a_trickled_status_line_meets_the_deadline(trickler):
    """The finding: each byte came well within the old timeout, so the request never ended."""
    with pytest.raises(FetchError) as info:
        get(trickler, timeout=1.0, allow_private=True)
    assert info.value.code == "timeout" and "1 s" in str(info.value)


def test_load_image_uses_the_same_fetcher(trickler):
    from vlm_course.images import load_image

    with pytest.raises(ImageError, match="timed out after 0.8 s"):
        load_image(trickler, timeout=0.8)  # the library's default allows loopback (a learner's own machine)
    with pytest.raises(ImageError, match="non-public"):
        load_image(trickler, timeout=0.8, allow_private_urls=False)


def test_https_to_a_plain_http_server_is_a_clear_tls_error(site):
    _, port = site
    with pytest.raises(FetchError, match="TLS failed"):
        get(f"https://127.0.0.1:{port}/ok", allow_private=True)
    assert CONNECTED == ["127.0.0.1"]


def test_https_handshake_meets_the_deadline():
    """A host that accepts the connection and never answers the TLS hello: the fetch ends at the deadline."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # the kernel accepts the connection; nobody ever reads or writes
    try:
        with pytest.raises(FetchError) as info:
            get(f"https://127.0.0.1:{listener.getsockname()[1]}/x.png", timeout=1.0, allow_private=True)
        assert info.value.code == "timeout"
    finally:
        listener.close()
