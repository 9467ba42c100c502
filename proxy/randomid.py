"""Random identifiers and tokens that people pass on a command line."""

from __future__ import annotations

import secrets


def random_id(nbytes: int) -> str:
    """A URL-safe random string of ``nbytes`` random bytes that never starts with ``-``:
    argparse takes ``approve -Xy…`` or ``--token -Xy…`` for an option, so one id in 64
    would otherwise be unusable from the CLI."""
    while True:
        value = secrets.token_urlsafe(nbytes)
        if not value.startswith("-"):
            return value
