"""User-id privacy: keyed pseudonyms on ingest.

* ``pseudonymize(user_id, key)`` — with ``Settings.pseudonymize_key`` set, the worker replaces every
  user id by ``HMAC-SHA256(key, user_id)`` (hex) *before* anything is stored or emitted, so the table,
  its changelog and the recommendations topic never hold the raw id. A keyed hash (not a bare SHA-256)
  because user-id spaces are small and a bare hash is reversed by hashing every candidate id; without the
  key that dictionary attack is not possible. The same key gives the same pseudonym on every worker and
  every restart, so state keeps working; rotating the key starts every user afresh (by design: it is the
  way to unlink all stored state from people at once).
* Logs and metrics carry no user ids at all (labels are bounded: see metrics.py); nothing in the worker
  needs to print one. tests/test_privacy_exposure.py greps worker logs and ``/metrics`` for them.
"""

from __future__ import annotations

import hashlib
import hmac

PSEUDONYM_PREFIX = "u_"


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
