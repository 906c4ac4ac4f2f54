"""Typed errors at the daemon's boundaries. Callers branch on the type, never on the message."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of the daemon's own errors."""


class ConfigError(GatewayError):
    """A user mistake in the configuration: printed as one line, never as a traceback. ``key`` names
    the key at fault when there is one (``timezone``, ``uplink.port``)."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class OutboxError(GatewayError):
    """The durable store failed (disk full, I/O error, corrupt file)."""


class UplinkError(GatewayError):
    """The MQTT uplink cannot be set up (bad TLS material, unreadable password file...)."""


class CommandRejected(GatewayError):
    """A command (from gatewayctl or the cloud) the gateway refuses, with a machine-readable code
    (unknown_command, malformed, invalid, too_large, rate_limited, not_found, conflict, unavailable,
    failed)."""

    def __init__(self, code: str, reason: str, *, key: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.key = key  # the argument or option the reason is about, when there is one
