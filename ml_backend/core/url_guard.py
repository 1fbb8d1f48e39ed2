"""Which addresses task image URLs may reach (server-side request forgery).

Image URLs come from task data, which anyone who can import tasks controls. Without a
check, ``http://169.254.169.254/…`` would read cloud credentials and ``http://127.0.0.1:6379``
would talk to Redis. The rule:
- Label Studio's own origin (``LABEL_STUDIO_URL``) is trusted at any address: it is often on
  loopback or a private network, and the backend talks to it anyway;
- hosts and networks in ``IMAGE_URL_ALLOWLIST`` (``minio.internal``, ``10.0.0.0/8``, …) are
  allowed too;
- everything else must resolve to globally routable unicast addresses only: no loopback,
  private, link-local (cloud metadata), shared (CGNAT), multicast, reserved or unspecified
  ones, also when written as IPv4-mapped IPv6, or as decimal, octal or hex numbers;
- only ``http`` and ``https``.

It is applied twice: before each request and each redirect hop (:meth:`AddressPolicy.check_url`,
a clear error), and again when the socket connects (:class:`GuardedAdapter`), to the
address actually connected to, so a DNS answer that changes between the two (DNS
rebinding) cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NameResolutionError

from ml_backend.core.errors import ImageNotAllowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses it resolves to (socket.getaddrinfo by default; tests stub it)
Resolver = Callable[[str, int], list[str]]


class AddressRefused(Exception):
    # Not an OSError on purpose: urllib3 would retry that and requests would hide it.
    """A connection to a forbidden address was stopped before it was made."""


def system_resolver(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def numeric_address(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is one in any form a resolver would accept
    (``127.1``, ``2130706433``, ``0177.0.0.1``, ``0x7f.0.0.1``, ``[::1]``), else None. No
    lookup is made."""
    text = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if text and all(c in "0123456789abcdefxABCDEFX." for c in text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))  # the C library's forms
        except OSError:
            return None
    return None


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` may not be reached, or None when it is globally routable unicast."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (
            address.teredo[1] if address.teredo else None)
        if embedded is not None:
            reason = refusal(embedded)
            return f"{reason} (embedded in {address})" if reason else None
    for name in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(address, f"is_{name}"):
            return name.replace("_", "-")
    if not address.is_global:
        return "not globally routable"
    return None


def _parse_allowlist(entries: Iterable[str]) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    hosts, networks = set(), []
    for raw in entries:
        entry = raw.strip().lower()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            hosts.add(entry)
    return frozenset(hosts), tuple(networks)


@dataclass(frozen=True)
class AddressPolicy:
    trusted_origins: frozenset[tuple[str, str, int]] = frozenset()  # (scheme, host, port)
    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()
    resolve: Resolver = field(default=system_resolver, compare=False)

    @classmethod
    def create(cls, trusted_urls: Iterable[str | None], allowlist: Iterable[str],
               resolve: Resolver = system_resolver) -> AddressPolicy:
        hosts, networks = _parse_allowlist(allowlist)
        origins = frozenset(o for o in (_origin(u) for u in trusted_urls if u) if o)
        return cls(origins, hosts, networks, resolve)

    def trusts_host(self, scheme: str, host: str, port: int) -> bool:
        host = host.lower().strip("[]")
        return (scheme, host, port) in self.trusted_origins or host in self.allowed_hosts \
            or f"{host}:{port}" in self.allowed_hosts

    def address_refusal(self, address: IPAddress) -> str | None:
        if any(address in network for network in self.allowed_networks):
            return None
        return refusal(address)

    def check_url(self, url: str, shown: str | None = None) -> None:
        """Raise ImageNotAllowed unless ``url`` may be fetched (scheme, host, every address
        it resolves to). Resolution failures are left to the request itself."""
        shown = shown or url
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ImageNotAllowed(f"image URL {shown}: scheme {scheme!r} is not allowed "
                                  "(only http and https)")
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        if not host:
            raise ImageNotAllowed(f"image URL {shown} has no host")
        if self.trusts_host(scheme, host, port):
            return
        numeric = numeric_address(host)
        try:
            addresses = [numeric] if numeric is not None else [
                ipaddress.ip_address(a.split("%", 1)[0]) for a in self.resolve(host, port)]
        except OSError:
            return  # unresolvable: the request fails with its own clear error
        for address in addresses:
            reason = self.address_refusal(address)
            if reason is not None:
                raise ImageNotAllowed(
                    f"image URL {shown}: {host} is a {reason} address ({address}); only Label "
                    "Studio's own address and IMAGE_URL_ALLOWLIST may be non-public")


def _origin(url: str) -> tuple[str, str, int] | None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), parts.port or (443 if scheme == "https" else 80)


def _guarded_connection(base: type[HTTPConnection], scheme: str,
                        policy: AddressPolicy) -> type[HTTPConnection]:
    class Guarded(base):  # type: ignore[valid-type, misc]
        def _new_conn(self) -> socket.socket:
            host, port = self._dns_host, int(self.port or 0)
            if policy.trusts_host(scheme, host, port):
                return super()._new_conn()  # type: ignore[no-any-return]
            numeric = numeric_address(host)
            try:
                found = [str(numeric)] if numeric is not None else policy.resolve(host, port)
            except OSError as exc:
                raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
            allowed = []
            for text in found:
                address = ipaddress.ip_address(text.split("%", 1)[0])
                reason = policy.address_refusal(address)
                if reason is not None:
                    raise AddressRefused(f"{host} resolved to {address} ({reason}) at connect "
                                         "time")
                allowed.append(text)
            # Connect to the address just checked, not to a second lookup's answer.
            self._dns_host = allowed[0]
            try:
                return super()._new_conn()  # type: ignore[no-any-return]
            finally:
                self._dns_host = host

    return Guarded


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose connections check the address they connect to."""

    def __init__(self, policy: AddressPolicy, **kwargs: Any) -> None:
        self._policy = policy
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        policy = self._policy

        class Http(HTTPConnectionPool):
            ConnectionCls = _guarded_connection(HTTPConnection, "http", policy)

        class Https(HTTPSConnectionPool):
            ConnectionCls = _guarded_connection(HTTPSConnection, "https", policy)

        self.poolmanager.pool_classes_by_scheme = {"http": Http, "https": Https}
