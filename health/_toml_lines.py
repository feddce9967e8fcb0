"""Where each key of a TOML text was written, for error messages that name the line.

This module owns :func:`key_lines` (each table and key path of a text, mapped to the first
line it appears on) and :func:`format_key` (a key path written as TOML writes it). ``tomllib``
keeps no positions, so the text is scanned line by line: table headers (``[a.b]``, ``[[a]]``,
whose keys below belong to the latest element) and ``key = value`` lines. Best effort: a key
inside an inline table points at the line of its enclosing key.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["KeyPath", "format_key", "key_lines"]

KeyPath = tuple[str | int, ...]
"""A key path: table and key names, and indexes into arrays of tables."""


def format_key(path: KeyPath) -> str:
    """Write ``path`` the way TOML would: ``services."pkg.A".checks[1].port``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
        out += f".{text}" if out else text
    return out


def _single_path(doc: Mapping[str, Any]) -> tuple[str, ...]:
    """The key path of a document holding one nested key (as parsed from one line)."""
    keys: list[str] = []
    node: Any = doc
    # Bounded by the nesting depth of a one-line document.
    while isinstance(node, dict) and len(node) == 1:
        key = next(iter(node))
        keys.append(key)
        node = node[key]
    return tuple(keys)


def _split_key(line: str) -> str | None:
    """The text before the first ``=`` outside quotes, or None if there is none."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "=":
            return line[:i]
        elif char == "#":
            return None
    return None


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map each table and key path written in ``text`` to the first line it appears on."""
    lines: dict[KeyPath, int] = {}
    arrays: dict[tuple[str, ...], int] = {}
    table: KeyPath = ()

    def resolve(keys: tuple[str, ...]) -> KeyPath:
        # Keys below an array of tables belong to its latest element.
        out: list[str | int] = []
        for i, key in enumerate(keys):
            out.append(key)
            if i < len(keys) - 1 and keys[: i + 1] in arrays:
                out.append(arrays[keys[: i + 1]])
        return tuple(out)

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            try:
                keys = _single_path(tomllib.loads(line))
            except tomllib.TOMLDecodeError:
                continue  # a line inside a multi-line array, not a header
            if not keys:
                continue
            # "[a.b]" also defines "a" here if nothing earlier did.
            for i in range(1, len(keys) + 1):
                lines.setdefault(resolve(keys[:i]), lineno)
            if line.startswith("[["):
                arrays[keys] = arrays.get(keys, -1) + 1
                table = (*resolve(keys), arrays[keys])
            else:
                table = resolve(keys)
            lines.setdefault(table, lineno)
            continue
        key_text = _split_key(line)
        if key_text is None:
            continue
        try:
            keys = _single_path(tomllib.loads(key_text + "= 0"))
        except tomllib.TOMLDecodeError:
            continue
        for i in range(1, len(keys) + 1):
            lines.setdefault((*table, *keys[:i]), lineno)
    return lines
