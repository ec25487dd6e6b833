"""Sub-commands of `stream-rec`; each module defines ``SUMMARY`` and ``register(subparsers)`` (see stream_rec/cli.py)."""
