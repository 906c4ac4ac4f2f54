"""Change one key of the gateway's TOML file in place, keeping its comments and layout.

Keys are ``section.key`` for a table (``uplink.keepalive``) and ``devices.<id>.<key>`` for the
``[[devices]]`` table whose ``id`` is ``<id>``. The new text is validated by the same code as at start
(:func:`gateway.config.parse_config`) before anything is written, and written atomically (temp file,
fsync, rename) with the old file's mode and owner.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from gateway.config import Config, parse_config
from gateway.errors import ConfigError

HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*(#.*)?$")


def toml_value(text: str) -> str:
    """The CLI's value as a TOML literal: kept as written when it is one (numbers, true/false, quoted
    strings, arrays, inline tables), else quoted as a string."""
    try:
        tomllib.loads(f"x = {text}")
    except tomllib.TOMLDecodeError:
        return json.dumps(text)
    return text


def _blocks(lines: list[str]) -> list[tuple[str, bool, int, int]]:
    """(name, is_array_table, header_line, end_line_exclusive) for each table in the file."""
    heads = []
    for i, line in enumerate(lines):
        m = HEADER.match(line)
        if m:
            heads.append((m.group(2), m.group(1) == "[[", i))
    out = []
    for n, (name, arr, i) in enumerate(heads):
        end = heads[n + 1][2] if n + 1 < len(heads) else len(lines)
        out.append((name, arr, i, end))
    return out


def _key_re(key: str) -> re.Pattern[str]:
    return re.compile(rf"^(\s*){re.escape(key)}\s*=")


def set_key(text: str, dotted: str, literal: str) -> str:
    parts = dotted.split(".")
    lines = text.splitlines(keepends=False)
    blocks = _blocks(lines)
    if parts[0] == "devices":
        if len(parts) != 3:
            raise ConfigError(f"{dotted}: a device key is devices.<id>.<key>")
        dev_id, key = parts[1], parts[2]
        target = None
        for name, arr, start, end in blocks:
            if name == "devices" and arr:
                for j in range(start + 1, end):
                    m = re.match(r'^\s*id\s*=\s*"([^"]*)"', lines[j])
                    if m and m.group(1) == dev_id:
                        target = (start, end)
        if target is None:
            raise ConfigError(f"{dotted}: no [[devices]] table with id = {dev_id!r}")
    else:
        if len(parts) != 2:
            raise ConfigError(f"{dotted}: a key is <section>.<key>, e.g. uplink.keepalive")
        section, key = parts
        matches = [(s, e) for name, arr, s, e in blocks if name == section and not arr]
        if not matches:
            lines += ["", f"[{section}]"]
            target = (len(lines) - 1, len(lines))
        else:
            target = matches[0]
    start, end = target
    pattern = _key_re(key)
    for j in range(start + 1, end):
        m = pattern.match(lines[j])
        if m:
            lines[j] = f"{m.group(1)}{key} = {literal}"
            break
    else:
        insert_at = end
        while insert_at > start + 1 and not lines[insert_at - 1].strip():
            insert_at -= 1
        lines.insert(insert_at, f"{key} = {literal}")
    return "\n".join(lines) + "\n"


def apply(path: Path, dotted: str, value_text: str) -> tuple[Config, Any]:
    """Set the key in the file if the result is a valid configuration. Returns (new config, value)."""
    old = path.read_text(encoding="utf-8")
    literal = toml_value(value_text)
    new = set_key(old, dotted, literal)
    try:
        doc = tomllib.loads(new)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {dotted} = {value_text}: the result is not valid TOML: {exc}") from None
    cfg = parse_config(doc, path)
    st = os.stat(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, st.st_mode & 0o7777)
        try:
            os.chown(tmp, st.st_uid, st.st_gid)
        except PermissionError:
            pass
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    value = tomllib.loads(f"x = {literal}")["x"]
    return cfg, value
