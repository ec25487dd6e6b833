"""User-id privacy: keyed pseudonyms on ingest, and ids that are safe to print.

Two different needs, two small pure functions:

* ``pseudonymize(user_id, key)`` — with ``Settings.pseudonymize_key`` set, the worker replaces every
  user id by ``HMAC-SHA256(key, user_id)`` (hex) *before* anything is stored or emitted, so the table,
  its changelog and the recommendations topic never hold the raw id. A keyed hash (not a bare SHA-256)
  because user-id spaces are small and a bare hash is reversed by hashing every candidate id; without the
  key that dictionary attack is not possible. The same key gives the same pseudonym on every worker and
  every restart, so state keeps working; rotating the key starts every user afresh (by design: it is the
  way to unlink all stored state from people at once).
* ``log_safe_id(user_id)`` — what a log line may show when it must point at a user: a short keyed hash
  under a random key drawn once per process. Lines of one worker can still be correlated ("the same user
  failed twice") but nothing in a log file can be joined back to a person, even by someone who holds
  ``pseudonymize_key``. Metrics never carry user ids at all (labels are bounded: see metrics.py).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PSEUDONYM_PREFIX = "u_"
_LOG_KEY = secrets.token_bytes(32)


def pseudonymize(user_id: str, key: str) -> str:
    """``u_`` + hex HMAC-SHA256 of ``user_id`` under ``key``; the id unchanged when ``key`` is empty.

    Deliberately not idempotent (an id that already looks like a pseudonym is hashed again): otherwise
    whoever can read the recommendations topic could write events straight into a pseudonymised user's
    state by sending that pseudonym as the user id.
    """
    if not key:
        return user_id
    digest = hmac.new(key.encode("utf-8"), user_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest


def is_pseudonym(user_id: str) -> bool:
    """True for ids of the shape ``pseudonymize`` produces (``u_`` + 64 lower-case hex digits)."""
    body = user_id[len(PSEUDONYM_PREFIX):]
    return (user_id.startswith(PSEUDONYM_PREFIX) and len(body) == 64
            and all(c in "0123456789abcdef" for c in body))


def log_safe_id(user_id: str | bytes | None) -> str:
    """A 12-hex-digit tag for ``user_id`` that is stable within this process only (see module doc)."""
    if user_id is None:
        return "user#none"
    raw = user_id if isinstance(user_id, bytes) else str(user_id).encode("utf-8", "surrogatepass")
    return "user#" + hmac.new(_LOG_KEY, raw, hashlib.sha256).hexdigest()[:12]
