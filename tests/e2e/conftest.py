"""Fixtures of the end-to-end tests; they live in ``harness.py`` so test modules can
import its helpers by a name no other ``conftest`` shadows."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import *  # noqa: F403 - fixtures must be module attributes here
