"""Outbound HTTP to addresses an operator gave (webhooks, SPEC §13), with the guard against
server-side request forgery.

A target must be `https://`; `http://` and loopback, private, link-local, reserved or
multicast addresses only with `CONSOLE_WEBHOOK_ALLOW_PRIVATE=true` (local development,
tests). The check runs on the *resolved* addresses at send time, not only when the URL is
added (a public name may later resolve to 127.0.0.1 or 169.254.169.254), and the
connection goes only to the addresses that were checked (no second lookup that a rebinding
DNS server could answer differently). Redirects are never followed, proxies from the
environment are never used, and the whole exchange has one deadline.
"""
from __future__ import annotations

import dataclasses
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from urllib.parse import SplitResult, urlsplit

RESPONSE_EXCERPT = 500  # characters of the receiver's answer kept on record
_READ_AT_MOST = 4096  # bytes of the body read for that excerpt (the rest is never read)


class RefusedTarget(ValueError):
    """A URL or an address that the guard does not let the worker reach."""


def check_url(url: str, allow_private: bool) -> SplitResult:
    """The parsed URL if its form is acceptable (scheme, host, port); RefusedTarget otherwise."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http"):
        raise RefusedTarget(f"{url!r} is not an http(s) URL.")
    if parts.scheme == "http" and not allow_private:
        raise RefusedTarget(f"{url!r} is not https:// (http:// only with CONSOLE_WEBHOOK_ALLOW_PRIVATE=true).")
    if not parts.hostname:
        raise RefusedTarget(f"{url!r} has no host.")
    if parts.username is not None or parts.password is not None:
        raise RefusedTarget(f"{url!r} carries credentials; the signature authenticates the console instead.")
    try:
        parts.port  # noqa: B018  (raises on a port out of range)
    except ValueError as error:
        raise RefusedTarget(f"{url!r}: {error}.") from None
    return parts


def forbidden_reason(address: str) -> str | None:
    """Why the worker may not connect to this IP address without ALLOW_PRIVATE, or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for reason, flagged in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                            ("private", ip.is_private), ("multicast", ip.is_multicast),
                            ("reserved", ip.is_reserved), ("unspecified", ip.is_unspecified)):
        if flagged:
            return reason
    if not ip.is_global:  # shared address space (100.64/10) and the like
        return "not globally routable"
    return None


def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """The host's addresses, every one of them checked; RefusedTarget if any is forbidden
    (a name that resolves to both a public and a private address is refused)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise RefusedTarget(f"{host} does not resolve ({error.strerror or error}).") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise RefusedTarget(f"{host} does not resolve.")
    if not allow_private:
        for address in addresses:
            reason = forbidden_reason(address)
            if reason:
                raise RefusedTarget(f"{host} resolves to {address}, a {reason} address "
                                    "(allowed only with CONSOLE_WEBHOOK_ALLOW_PRIVATE=true).")
    return addresses


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one POST came to: the receiver's status (None when it never answered), why it
    failed when it did, a shortened body, its Retry-After header, how long it took."""

    status: int | None
    error: str | None
    body: str | None
    retry_after: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def _connect(addresses: list[str], port: int, timeout: float) -> socket.socket:
    """A TCP connection to the first of the checked addresses that answers."""
    error: OSError | None = None
    for address in addresses:
        try:
            sock = socket.create_connection((address, port), timeout)
        except OSError as failed:
            error = failed
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise error or OSError(f"no address to connect to on port {port}")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Sends Host: <name> but connects only to the addresses that were checked."""

    def __init__(self, host: str, port: int, addresses: list[str], timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._addresses = addresses

    def connect(self) -> None:
        self.sock = _connect(self._addresses, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to a checked address, the certificate verified for the URL's host name (SNI too)."""

    def __init__(self, host: str, port: int, addresses: list[str], timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._addresses = addresses

    def connect(self) -> None:
        self.sock = self._context.wrap_socket(_connect(self._addresses, self.port, self.timeout),
                                              server_hostname=self.host)


_TLS = ssl.create_default_context()


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float, allow_private: bool) -> Outcome:
    """POST `body` to `url` once; never raises for what the network or the receiver does."""
    started = time.monotonic()

    def outcome(status=None, error=None, text=None, retry_after=None) -> Outcome:
        return Outcome(status, error, text, retry_after, int((time.monotonic() - started) * 1000))

    try:
        parts = check_url(url, allow_private)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = resolve(parts.hostname, port, allow_private)
    except RefusedTarget as refused:
        return outcome(error=f"refused: {refused}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        connection = _PinnedHTTPSConnection(parts.hostname, port, addresses, timeout, _TLS)
    else:
        connection = _PinnedHTTPConnection(parts.hostname, port, addresses, timeout)
    # One deadline for the whole exchange: a receiver that trickles its answer byte by byte
    # cannot hold a worker thread past it (the socket is shut down under the blocked read).
    timed_out = threading.Event()
    watchdog = threading.Timer(timeout, _abort, args=(connection, timed_out))
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.request("POST", path, body=body, headers={**headers, "Content-Length": str(len(body))})
        response = connection.getresponse()
        excerpt = response.read(_READ_AT_MOST).decode("utf-8", "replace")[:RESPONSE_EXCERPT]
        if timed_out.is_set():
            raise TimeoutError
        return outcome(status=response.status, text=excerpt, retry_after=response.getheader("Retry-After"),
                       error=None if 200 <= response.status < 300 else _status_error(response))
    except (TimeoutError, socket.timeout):
        return outcome(error=f"timed out after {timeout:g} s")
    except (OSError, http.client.HTTPException) as error:
        if timed_out.is_set():
            return outcome(error=f"timed out after {timeout:g} s")
        return outcome(error=f"{type(error).__name__}: {error}"[:RESPONSE_EXCERPT])
    finally:
        watchdog.cancel()
        connection.close()


def _status_error(response: http.client.HTTPResponse) -> str:
    if 300 <= response.status < 400:
        location = response.getheader("Location")
        return f"redirect {response.status} (not followed)" + (f" to {location[:200]}" if location else "")
    return f"HTTP {response.status} {response.reason}"[:200]


def _abort(connection: http.client.HTTPConnection, timed_out: threading.Event) -> None:
    timed_out.set()
    sock = connection.sock
    if sock is not None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass
