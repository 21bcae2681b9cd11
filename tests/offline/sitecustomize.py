"""No network beyond this machine, for the tests and every Python process they start.

conftest.py runs this in the pytest process and puts this folder first on PYTHONPATH, so that every
Python process the tests start (Snakemake, its jobs, accelerate's workers) imports it at start-up as
``sitecustomize``. An IPv4 or IPv6 socket may then connect or send only to a loopback address
(127.0.0.0/8, ::1, ``localhost``): anything else raises ``NetworkBlocked`` naming the address, so a
code path that reaches for the network fails its test instead of passing where a network happens to
be. (Name lookups through the C library are not intercepted; a connection they lead to is.)
"""

import ipaddress
import socket


class NetworkBlocked(OSError):
    pass


def _loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else None
    if host is None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:  # a host name other than localhost
        return False


def _guarded(method):
    def guarded(self, *args):
        address = args[-1]
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address):
            raise NetworkBlocked(f"the tests run offline: a connection to {address!r} was refused (loopback only)")
        return method(self, *args)

    guarded.__name__ = method.__name__
    guarded._offline_guard = True
    return guarded


if not getattr(socket.socket.connect, "_offline_guard", False):
    for _name in ("connect", "connect_ex", "sendto"):
        setattr(socket.socket, _name, _guarded(getattr(socket.socket, _name)))
