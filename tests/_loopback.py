"""The network the tests' servers may use for image URLs: loopback only, and no DNS.

    start_in_background(settings, vlm=vlm, network=LOOPBACK_ONLY)

`connect` refuses any address outside 127.0.0.0/8 and ::1 before a socket exists, and `resolve` knows
only 'localhost'; so even an address the classifier got wrong can never lead a test to another machine
(the server answers such a URL with a 400, as for any host it cannot reach).
"""

from __future__ import annotations

import ipaddress
import socket

from vlm_course.fetch import FetchError, open_connection


def loopback_only(ip, port, family, deadline):
    if not ipaddress.ip_address(ip.split("%", 1)[0]).is_loopback:
        raise ConnectionRefusedError(f"tests connect to loopback only, not {ip}")
    return open_connection(ip, port, family, deadline)


def no_dns(host, port, deadline):
    if host.lower().rstrip(".") != "localhost":
        raise FetchError(f"tests resolve no host names ({host!r})")
    return [(socket.AF_INET, "127.0.0.1")]


LOOPBACK_ONLY = {"connect": loopback_only, "resolve": no_dns}
