"""Trusted reverse proxies (``[gateway] trusted_proxies``): who the client is behind nginx.

Behind a load balancer every connection comes from the proxy's address. The gateway believes a
forwarding header only from a peer named in ``trusted_proxies`` (addresses or CIDR networks):
anyone else could write ``X-Forwarded-For`` and pick the address its connections are counted and
recorded under. For a trusted peer:

* the **client address** is read from ``X-Forwarded-For`` right to left, skipping trusted hops
  (each proxy appends the address it saw): the first untrusted entry is the client. The header is
  bounded (``MAX_HEADER``, ``MAX_HOPS``); an entry that is not an IP address ends the walk, and the
  last address proven so far is used;
* the **scheme** the client used is ``X-Forwarded-Proto`` (``https`` or ``http``), so discovery
  offers ``wss://``/``sses://`` through a TLS proxy;
* ``max_connections_per_address`` does **not** apply to the proxy's own connections: it would cap
  every client together. The proxy limits single clients (nginx ``limit_conn``).

No ``Forwarded`` (RFC 7239) parsing: nginx and most balancers write the ``X-Forwarded-*`` pair.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from gtl_nb.protocol.errors import ConfigurationError

__all__ = ["MAX_HEADER", "MAX_HOPS", "TrustedProxies", "peer_text"]

MAX_HEADER = 4096
"""Longest ``X-Forwarded-For`` read; a longer one is cut (its rightmost part is what matters)."""
MAX_HOPS = 32
"""Entries of ``X-Forwarded-For`` looked at, from the right."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TrustedProxies:
    """The peers whose forwarding headers are believed (none by default: nothing is)."""

    networks: tuple[Network, ...] = field(default=())

    @classmethod
    def parse(cls, value: object, *, where: str = "[gateway] trusted_proxies") -> TrustedProxies:
        """A list of addresses or networks (``"127.0.0.1"``, ``"10.0.0.0/8"``, ``"::1"``)."""
        if value is None:
            return cls()
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise ConfigurationError(f'{where} must be a list of addresses or networks, e.g. ["127.0.0.1"]')
        networks = []
        for item in value:
            if not isinstance(item, str):
                raise ConfigurationError(f"{where}: {item!r} is not an address or a network")
            try:
                network = ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ConfigurationError(f"{where}: {item!r} is not an IP address or a CIDR network") from None
            networks.append(_unmapped(network))
        return cls(tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, host: str | None) -> bool:
        """Whether ``host`` (an IP address, as a peer's) is one of the trusted proxies."""
        if not self.networks or not host:
            return False
        address = _address(host)
        return address is not None and any(address in network for network in self.networks)

    def client(self, peer_host: str | None, forwarded_for: str | None) -> str | None:
        """The client's address: ``peer_host`` itself unless it is a trusted proxy that forwarded one."""
        if not forwarded_for or not self.trusts(peer_host):
            return peer_host
        client = peer_host
        for entry in reversed(forwarded_for[-MAX_HEADER:].split(",")[-MAX_HOPS:]):
            address = _address(entry.strip())
            if address is None:
                break  # not an address (or cut by the length bound): keep the last one proven
            client = str(address)
            if not any(address in network for network in self.networks):
                break
        return client

    def scheme(self, peer_host: str | None, forwarded_proto: str | None, default: str) -> str:
        """``https``/``http`` as the client used it, when a trusted proxy says so; else ``default``."""
        if forwarded_proto and self.trusts(peer_host):
            proto = forwarded_proto.split(",", 1)[0].strip().lower()
            if proto in ("http", "https"):
                return proto
        return default


def _unmapped(network: Network) -> Network:
    """``::ffff:10.0.0.0/104`` as ``10.0.0.0/8``: peers are compared in IPv4 form (``_address``)."""
    mapped = ipaddress.ip_network("::ffff:0:0/96")
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(mapped):
        base = network.network_address.ipv4_mapped
        assert base is not None
        return ipaddress.ip_network(f"{base}/{max(network.prefixlen - 96, 0)}", strict=False)
    return network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if len(text) > 64:
        return None
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def peer_text(client: object) -> str | None:
    """An ASGI ``client`` (or Starlette's ``Address``) as the ledger's ``peer``: ``host:port``, or only
    the host when the port is unknown (0: the client's address came from a trusted proxy)."""
    if client is None:
        return None
    host, port = client[0], client[1]  # type: ignore[index]
    shown = f"[{host}]" if ":" in str(host) else str(host)
    return f"{shown}:{port}" if port else shown
