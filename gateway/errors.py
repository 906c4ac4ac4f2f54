"""Typed errors at the daemon's boundaries. Callers branch on the type, never on the message."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of the daemon's own errors."""


class ConfigError(GatewayError):
    """A user mistake in the configuration: printed as one line, never as a traceback."""


class OutboxError(GatewayError):
    """The durable store failed (disk full, I/O error, corrupt file)."""


class UplinkError(GatewayError):
    """The MQTT uplink cannot be set up (bad TLS material, unreadable password file...)."""
