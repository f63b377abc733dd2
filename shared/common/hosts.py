"""Hosts and URLs we are given (settings) or hand out (status and poll URLs): what a plain
``host[:port]`` is, and what keeps a URL from being plain. Pure: read by the settings check and
by the HTTP API, which builds absolute URLs from request headers."""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

# A host as it may appear in an absolute URL we hand out: DNS labels or an IPv4 address, or an
# IPv6 address in brackets, then an optional port. No user-info, path, query or other characters.
_HOST_PORT = re.compile(
    r"(?P<host>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]{2,45}\])(?::(?P<port>[0-9]{1,5}))?"
)


def valid_host(value: str) -> bool:
    """Whether ``value`` is ``host`` or ``host:port`` and nothing else (see _HOST_PORT)."""
    match = _HOST_PORT.fullmatch(value)
    if not match or len(value) > 260:
        return False
    host, port = match.group("host"), match.group("port")
    if port is not None and (not 0 < int(port) <= 65535 or port.startswith("0")):
        return False
    try:
        if host.startswith("["):
            ipaddress.IPv6Address(host[1:-1])
        elif re.fullmatch(r"[0-9.]+", host):
            ipaddress.IPv4Address(host)  # all digits: an IPv4 address, and a valid one
        elif re.fullmatch(r"[0-9]+|0x[0-9a-f]*", host.rsplit(".", 1)[-1].lower()):
            return False  # no DNS name ends in a number; 0x7f.1 is 127.0.0.1 to inet_aton
    except ValueError:
        return False
    return True


def host_name(value: str) -> str:
    """The host of ``host[:port]`` (brackets kept for IPv6), lower-case."""
    match = _HOST_PORT.fullmatch(value)
    return (match.group("host") if match else value).lower()


def url_form_problem(url: str) -> str | None:
    """What keeps ``url`` from being a plain ``scheme://host[:port]...`` URL, or None. Any ``@`` is
    refused: a password holding ``/ ? #`` (``https://u:sec/ret@host``) is not user-info to a URL
    parser, which reads ``u`` as the host instead; and the request libraries would send
    user-info as a password that every log of the URL must then hide."""
    if "@" in url:
        return "must not carry a user name or password (nor an @: write it as %40)"
    if re.search(r"[\s\x00-\x1f\x7f\\]", url):
        return "must not contain spaces, control characters or backslashes"
    try:
        netloc = urlsplit(url).netloc
    except ValueError:  # an unclosed [ of an IPv6 address
        netloc = ""
    if not valid_host(netloc):
        return "must name its host as host or host:port (a port in digits, 1-65535)"
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
