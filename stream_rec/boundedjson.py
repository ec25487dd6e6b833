"""One bounded JSON parse for every byte string that comes from outside (Kafka records, model files).

``json.loads`` alone is not safe on untrusted input: it recurses once per nesting level, so ~1,000 nested
arrays in a 2 KB record raise ``RecursionError`` (not a ``ValueError``) from deep inside the caller; it
reads any size it is given; and on bytes it guesses the encoding, so a UTF-8 byte order mark or UTF-16
text parses as if it were UTF-8 JSON. :func:`parse` checks, in this order and without recursion:

1. size: more than ``max_bytes`` -> ``oversize`` (before anything is decoded);
2. encoding: strict UTF-8, and no byte order mark -> else ``bad_json``;
3. nesting: the depth of ``[``/``{`` outside strings, counted by a flat scan of the text (skipped when the
   text holds fewer brackets than the limit, i.e. for almost every record) -> deeper than ``max_depth``
   is ``bad_json``;
4. only then ``json.loads``; any error it raises is ``bad_json``.

Every failure is a :class:`JSONRejected` (a ``ValueError``) with a machine-readable ``reason``
(``oversize`` or ``bad_json``, the same names as the DLQ reasons of ``stream_rec.validation``).
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32  # events nest 2-3 levels, catalog attributes a few more; json.loads recurses per level

# a JSON string (escapes included) or one bracket: strings are skipped whole, so brackets in text don't count
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


class JSONRejected(ValueError):
    """Bytes that :func:`parse` refuses; ``reason`` is ``oversize`` or ``bad_json``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def nesting_depth(text: str, limit: int) -> int:
    """Deepest bracket nesting of ``text`` outside JSON strings, counted up to ``limit + 1`` (enough to
    tell "too deep"); no recursion, so any input is safe to scan."""
    if text.count("[") + text.count("{") <= limit:  # cannot be deeper than its bracket count
        return 0
    depth = deepest = 0
    for match in _TOKENS.finditer(text):
        char = text[match.start()]
        if char == "[" or char == "{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif char == "]" or char == "}":
            depth -= 1
    return deepest


def parse(raw: bytes | bytearray | memoryview, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON document in ``raw``, or :class:`JSONRejected` (see the module docstring)."""
    if len(raw) > max_bytes:
        raise JSONRejected("oversize", f"{len(raw)} bytes > {max_bytes}")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONRejected("bad_json", f"not UTF-8: {exc}"[:200]) from None
    if text.startswith("\ufeff"):
        raise JSONRejected("bad_json", "starts with a byte order mark (JSON in Kafka records is UTF-8 without one)")
    if nesting_depth(text, max_depth) > max_depth:
        raise JSONRejected("bad_json", f"nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: only if the caller's stack is already deep
        raise JSONRejected("bad_json", str(exc)[:200] or type(exc).__name__) from None


def parse_file(path, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """:func:`parse` of a file's bytes; the size is checked before the file is read."""
    from pathlib import Path

    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise JSONRejected("oversize", f"{path.name}: {size} bytes > {max_bytes}")
    with open(path, "rb") as fh:
        return parse(fh.read(max_bytes + 1), max_bytes=max_bytes, max_depth=max_depth)
