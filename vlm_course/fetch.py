"""The one URL fetcher, for `load_image` and the server: `fetch(url, ...)` and `is_public_address(ip)`.

    data = fetch("https://example.org/cat.png", timeout=10, max_bytes=10_000_000, allow_private=False).data

What it guarantees, each a finding of issue 16:
- one deadline over the whole download: name resolution, connect, TLS, status line, headers and body.
  Every socket read is given only the time left, so a host that trickles its status line a byte at a
  time meets the deadline like any other;
- the address checked is the address connected to: the host is resolved once, every address is
  classified, and the socket connects to that address (no second lookup by an HTTP library, no
  DNS-rebinding window, no proxy from the environment);
- redirects are followed by hand, each hop parsed, resolved and checked like the first;
- `is_public_address` understands IPv4 inside IPv6 (mapped, compatible, NAT64, 6to4, Teredo) and
  every special-purpose range of IANA's registries, with its own table (Python's `ipaddress` changes
  its answers between versions and calls NAT64 / 6to4 / compatible forms of 127.0.0.1 global);
- every failure is a `FetchError` (an `ImageError`, so a `VLMCourseError`) with a `code` the server
  answers with and a message that says what to do.

`connect=` replaces the function that opens the TCP connection (tests pass one that only connects to
loopback, so that a misclassified address can never lead a test to the outside world).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable, Optional, Union

from .errors import ImageError

__all__ = ["fetch", "is_public_address", "parse_url", "FetchError", "Fetched"]

_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
USER_AGENT = "vlm-course (image fetcher)"

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# Not globally reachable (IANA IPv4 / IPv6 special-purpose address registries, and RFC 6890 / 8190 /
# 9637). Kept here, not taken from `ipaddress.is_global`, whose table differs between Python versions.
_SPECIAL_V4 = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8",          # "this network"
    "10.0.0.0/8",         # private
    "100.64.0.0/10",      # shared address space (carrier-grade NAT)
    "127.0.0.0/8",        # loopback
    "169.254.0.0/16",     # link-local (cloud metadata services live here)
    "172.16.0.0/12",      # private
    "192.0.0.0/24",       # IETF protocol assignments
    "192.0.2.0/24",       # documentation (TEST-NET-1)
    "192.31.196.0/24",    # AS112
    "192.52.193.0/24",    # AMT
    "192.88.99.0/24",     # deprecated 6to4 relay anycast
    "192.168.0.0/16",     # private
    "192.175.48.0/24",    # direct delegation AS112
    "198.18.0.0/15",      # benchmarking
    "198.51.100.0/24",    # documentation (TEST-NET-2)
    "203.0.113.0/24",     # documentation (TEST-NET-3)
    "224.0.0.0/4",        # multicast
    "240.0.0.0/4",        # reserved, and 255.255.255.255 broadcast
)]
_SPECIAL_V6 = [ipaddress.ip_network(n) for n in (
    "::/96",              # unspecified, loopback, and the deprecated IPv4-compatible ::a.b.c.d
    "::ffff:0:0/96",      # IPv4-mapped (checked through the embedded address instead, see below)
    "::ffff:0:0:0/96",    # IPv4-translated (SIIT)
    "64:ff9b:1::/48",     # local-use IPv4/IPv6 translation
    "100::/64",           # discard-only
    "100:0:0:1::/64",     # dummy IPv6 prefix
    "2001::/23",          # IETF protocol assignments (Teredo 2001::/32, ORCHID, benchmarking, ...)
    "2001:db8::/32",      # documentation
    "2002::/16",          # 6to4 (checked through the embedded address instead, see below)
    "3fff::/20",          # documentation
    "5f00::/16",          # segment routing (SRv6) SIDs
    "fc00::/7",           # unique local
    "fe80::/10",          # link-local
    "fec0::/10",          # deprecated site-local
    "ff00::/8",           # multicast
)]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")


class FetchError(ImageError):
    """A URL could not be fetched. `code`: url_not_allowed, invalid_image_url, image_too_large, timeout."""

    def __init__(self, message: str, code: str = "invalid_image_url"):
        super().__init__(message)
        self.code = code


@dataclass
class Fetched:
    data: bytes
    url: str  # after redirects
    content_type: Optional[str]


def _short(text: str, limit: int = 80) -> str:
    text = text.encode("unicode_escape", "backslashreplace").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- addresses


def embedded_ipv4(ip: IPAddress) -> Optional[ipaddress.IPv4Address]:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo client), if any."""
    if ip.version != 6:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        return ip.sixtofour
    if ip in _TEREDO:
        return ip.teredo[1]  # the client (its server is the other half; both are checked by the caller)
    if ip in _V4_COMPATIBLE and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: Union[str, IPAddress]) -> bool:
    """Whether `ip` is a globally reachable unicast address: not loopback, private, link-local, shared,
    multicast, reserved, documentation or any other special range, in IPv4 or embedded in IPv6.

    Raises ValueError for something that is not an address literal (a zone id like ``%eth0`` is allowed).
    """
    if isinstance(ip, str):
        ip = ipaddress.ip_address(ip.split("%", 1)[0])
    if not isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        raise ValueError(f"not an IP address: {ip!r}")
    if ip.version == 4:
        return not any(ip in net for net in _SPECIAL_V4)
    inner = embedded_ipv4(ip)
    if inner is not None:
        if ip in _TEREDO and not is_public_address(ip.teredo[0]):
            return False
        if ip in _V4_COMPATIBLE or ip in _TEREDO:  # deprecated or a tunnel into anything: never public
            return False
        return is_public_address(inner)
    if ip.scope_id:
        return False
    return not any(ip in net for net in _SPECIAL_V6)


# --------------------------------------------------------------------------- URLs


@dataclass
class ParsedURL:
    scheme: str
    host: str  # as in the URL, without brackets
    port: int
    target: str  # path and query for the request line
    ip: Optional[IPAddress]  # set when the host is an address literal


def parse_url(url: str) -> ParsedURL:
    """Check an http(s) URL's form: scheme, host, port, no control characters. Raises FetchError."""
    if not isinstance(url, str):
        raise FetchError(f"A URL must be a string, got {type(url).__name__}.")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise FetchError(f"The URL {_short(url)} contains spaces or control characters (such as NUL, CR or LF). "
                         "Percent-encode them (%20, ...) or check where the URL came from.")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise FetchError(f"The URL {_short(url)} is not valid text (it holds a lone surrogate).") from None
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:  # "Invalid IPv6 URL", "Port out of range 0-65535", "Port could not be cast"
        raise FetchError(f"The URL {_short(url)} is malformed ({e}). Expected e.g. 'https://example.org/cat.png'.") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"Unsupported URL scheme {scheme + '://' if scheme else '(none)'} in {_short(url)}. "
                         "Use an http(s) URL.")
    host = parts.hostname
    if not host:
        raise FetchError(f"The URL {_short(url)} has no host name. Expected e.g. 'https://example.org/cat.png'.")
    if parts.username is not None or parts.password is not None:
        raise FetchError(f"The URL {_short(url)} carries a user name or password; they are not sent. "
                         "Use a URL without credentials.")
    if port == 0:
        raise FetchError(f"The URL {_short(url)} names port 0. Use a port from 1 to 65535.")
    ip: Optional[IPAddress] = None
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if "[" in parts.netloc:
            raise FetchError(f"The URL {_short(url)} has brackets around something that is not an IPv6 address.") from None
        try:
            if len(host) > 253 or any(not 0 < len(label) <= 63 for label in host.rstrip(".").split(".")):
                raise UnicodeError("label empty or too long")
            host.encode("idna")
        except UnicodeError as e:
            raise FetchError(f"The URL {_short(url)} has an invalid host name ({e}).") from None
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    # An IRI's non-ASCII path ('/café.png') goes on the request line percent-encoded as UTF-8, as browsers send
    # it; existing %-escapes and reserved characters stay as they are.
    target = urllib.parse.quote(target, safe="!#$%&'()*+,/:;=?@[]~")
    return ParsedURL(scheme, host, port or (443 if scheme == "https" else 80), target, ip)


# --------------------------------------------------------------------------- the deadline


class _Deadline:
    def __init__(self, seconds: float):
        self.seconds, self.end = seconds, time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline")
        return left


class _DeadlineIO:
    """Every read and write gets only the time left before the fetch's deadline (mixed into both sockets)."""

    deadline: _Deadline

    def _arm(self):
        self.settimeout(self.deadline.left())

    def recv_into(self, *args, **kwargs):
        self._arm()
        return super().recv_into(*args, **kwargs)

    def recv(self, *args, **kwargs):
        self._arm()
        return super().recv(*args, **kwargs)

    def sendall(self, *args, **kwargs):
        self._arm()
        return super().sendall(*args, **kwargs)


class _DeadlineSocket(_DeadlineIO, socket.socket):
    """A plain TCP socket under the fetch's deadline."""


class _DeadlineSSLSocket(_DeadlineIO, ssl.SSLSocket):
    """A TLS socket under the fetch's deadline (TLS reads also go through read())."""

    def read(self, *args, **kwargs):
        self._arm()
        return super().read(*args, **kwargs)


def open_connection(ip: str, port: int, family: int, deadline: _Deadline) -> socket.socket:
    """A TCP connection to exactly `ip` (never a host name: nothing can re-resolve it)."""
    sock = _DeadlineSocket(family, socket.SOCK_STREAM)
    sock.deadline = deadline
    try:
        sock.settimeout(deadline.left())
        sock.connect((ip, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _resolve(host: str, port: int, deadline: _Deadline) -> list[tuple[int, str]]:
    """getaddrinfo under the deadline (it has no timeout of its own: run it in a daemon thread)."""
    result: dict = {}

    def run():
        try:
            result["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True, name="vlm-course-resolve")
    thread.start()
    thread.join(deadline.left())
    if thread.is_alive():
        raise socket.timeout("name resolution")
    if "error" in result:
        raise FetchError(f"Could not resolve the host {host!r}: {result['error']}. Check the URL and the network "
                         "(this machine may be offline).")
    seen, out = set(), []
    for family, _, _, _, addr in result["infos"]:
        if addr[0] not in seen:
            seen.add(addr[0])
            out.append((family, addr[0]))
    return out


# --------------------------------------------------------------------------- fetching


ConnectFn = Callable[[str, int, int, _Deadline], socket.socket]
ResolveFn = Callable[[str, int, _Deadline], list]


def fetch(url: str, *, timeout: float = 10.0, max_bytes: int = 20_000_000, allow_private: bool = False,
          max_redirects: int = 4, accept: str = "image/*", allowed: Optional[Callable[[str], bool]] = None,
          connect: Optional[ConnectFn] = None, resolve: Optional[ResolveFn] = None) -> Fetched:
    """GET `url` within `timeout` seconds in all, at most `max_bytes` of body, following up to
    `max_redirects` redirects; unless `allow_private`, every address is checked with is_public_address
    (or with `allowed(address)` when given). `connect` and `resolve` replace the TCP connect and the
    name lookup (tests: loopback only, no DNS)."""
    if isinstance(timeout, bool) or not (isinstance(timeout, (int, float)) and timeout > 0):
        raise FetchError(f"timeout must be a positive number of seconds, got {timeout!r}.")
    deadline = _Deadline(float(timeout))
    connect, resolve = connect or open_connection, resolve or _resolve
    if allowed is None:
        allowed = (lambda address: True) if allow_private else is_public_address
    try:
        for _ in range(max_redirects + 1):
            result = _get_once(url, deadline, max_bytes=max_bytes, allowed=allowed, accept=accept,
                               connect=connect, resolve=resolve)
            if isinstance(result, Fetched):
                return result
            url = result  # a redirect: the next hop is checked like the first
    except socket.timeout:
        raise FetchError(f"Downloading {_short(url)} timed out after {timeout:g} s (connect, headers and body "
                         "together). Check the host, raise the timeout, or send the image itself.", "timeout") from None
    raise FetchError(f"The URL {_short(url)} redirects more than {max_redirects} times.")


def _get_once(url: str, deadline: _Deadline, *, max_bytes: int, allowed: Callable[[str], bool], accept: str,
              connect: ConnectFn, resolve: ResolveFn) -> Union[Fetched, str]:
    parsed = parse_url(url)
    if parsed.ip is not None:
        family = socket.AF_INET6 if parsed.ip.version == 6 else socket.AF_INET
        addresses = [(family, parsed.host)]
    else:
        addresses = resolve(parsed.host, parsed.port, deadline)
    if not addresses:
        raise FetchError(f"The host {parsed.host!r} has no address.")
    for _, address in addresses:
        if not allowed(address):
            raise FetchError(f"The image URL's host {parsed.host!r} is a private, loopback or otherwise "
                             f"non-public address ({address}); it is refused (an operator can allow private "
                             "addresses). Send the image as a data URI instead.", "url_not_allowed")
    sock, last_error = None, None
    for family, address in addresses:
        try:
            sock = connect(address, parsed.port, family, deadline)
            break
        except socket.timeout:
            raise
        except OSError as e:
            last_error = e
    if sock is None:
        reason = getattr(last_error, "strerror", None) or last_error
        raise FetchError(f"Could not download {_short(url)}: {reason}. Check the URL and the network "
                         "(this machine may be offline), or send the image itself.")
    try:
        if parsed.scheme == "https":
            context = ssl.create_default_context()
            context.sslsocket_class = _DeadlineSSLSocket
            sock.settimeout(deadline.left())
            sock = context.wrap_socket(sock, server_hostname=parsed.host)
            sock.deadline = deadline
        return _exchange(url, parsed, sock, max_bytes=max_bytes, accept=accept)
    except (FetchError, socket.timeout):
        raise
    except ssl.SSLError as e:
        raise FetchError(f"Could not download {_short(url)}: TLS failed ({e.reason or e}).") from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise FetchError(f"Could not download {_short(url)}: {type(e).__name__}: {e}. Check the URL, or send the "
                         "image itself.") from None
    finally:
        sock.close()


def _exchange(url: str, parsed: ParsedURL, sock, *, max_bytes: int, accept: str) -> Union[Fetched, str]:
    conn = http.client.HTTPConnection(parsed.host, parsed.port)
    conn.default_port = 443 if parsed.scheme == "https" else 80  # so the Host header names no default port
    conn.sock = sock  # already connected to the checked address: http.client never resolves anything
    conn.request("GET", parsed.target, headers={"User-Agent": USER_AGENT, "Accept": accept,
                                                "Accept-Encoding": "identity", "Connection": "close"})
    response = conn.getresponse()
    try:
        if response.status in _REDIRECTS:
            location = response.getheader("Location")
            if not location:
                raise FetchError(f"The URL {_short(url)} redirects (HTTP {response.status}) without a Location.")
            return urllib.parse.urljoin(url, location)
        if response.status != 200:
            raise FetchError(f"Downloading {_short(url)} failed with HTTP {response.status} {response.reason}. "
                             "Check that the URL is right and public.")
        length = response.getheader("Content-Length")
        if length and length.strip().isdigit() and int(length) > max_bytes:
            raise FetchError(f"The download from {_short(url)} is too large ({int(length) / 1e6:.1f} MB; the limit is "
                             f"{max_bytes:,} bytes). Use a smaller image.", "image_too_large")
        chunks, total = [], 0
        while True:
            chunk = response.read(min(_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise FetchError(f"The download from {_short(url)} is too large (more than {max_bytes:,} bytes, the "
                                 "limit). Use a smaller image.", "image_too_large")
        if not chunks:
            raise FetchError(f"The download from {_short(url)} is empty (0 bytes). Check that the URL points at an image.")
        return Fetched(b"".join(chunks), url, response.getheader("Content-Type"))
    finally:
        response.close()
