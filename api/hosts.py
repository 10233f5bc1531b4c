"""Ollama's Host-header guard against DNS rebinding, for servers bound to loopback.

A web page on ``evil.example`` that rebinds its name to 127.0.0.1 can make a browser send requests
to a local server; the browser still sends ``Host: evil.example``. When the server listens on
loopback only, such a Host is refused (403), as Ollama refuses it.
"""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["is_loopback_bind", "host_allowed"]


def is_loopback_bind(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _hostname(header: str) -> str:
    header = header.strip()
    if header.startswith("["):  # [::1]:11434
        return header[1:].split("]", 1)[0]
    if header.count(":") == 1:
        return header.rsplit(":", 1)[0]
    return header


def host_allowed(header: str | None) -> bool:
    if not header:
        return True
    host = _hostname(header).lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return True
    return host == socket.gethostname().lower()
