"""Sub-commands of `stream-rec`; each module defines ``register(subparsers)`` (see stream_rec/cli.py)."""
