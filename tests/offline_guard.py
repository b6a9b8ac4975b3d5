"""Make every network attempt to a non-loopback address fail loudly and record it (imported first in a subprocess)."""

import ipaddress
import os
import socket

LOG = os.environ.get("OFFLINE_GUARD_LOG", "offline_guard.log")
_getaddrinfo, _connect, _connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex


def is_local(host) -> bool:
    """Return True for loopback hosts and addresses."""
    host = str(host).strip("[]")
    if host in {"localhost", "", "None"}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse(what: str):
    """Record the attempt and raise, so it cannot pass unnoticed."""
    with open(LOG, "a") as f:
        f.write(what + "\n")
    raise OSError(f"offline guard: network attempt refused: {what}")


def getaddrinfo(host, *args, **kwargs):
    """DNS look-ups of non-loopback names are network attempts."""
    if not is_local(host):
        refuse(f"getaddrinfo {host}")
    return _getaddrinfo(host, *args, **kwargs)


def connect(self, address):
    """Connections to non-loopback addresses are network attempts (UNIX sockets are local)."""
    if self.family in (socket.AF_INET, socket.AF_INET6) and not is_local(address[0]):
        refuse(f"connect {address}")
    return _connect(self, address)


def connect_ex(self, address):
    """Like `connect`, for the non-raising variant."""
    if self.family in (socket.AF_INET, socket.AF_INET6) and not is_local(address[0]):
        refuse(f"connect_ex {address}")
    return _connect_ex(self, address)


socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex = getaddrinfo, connect, connect_ex
