"""An emulated Spark API (Flexmls) replication endpoint for tests, benchmarks and the demo.

A deterministic MLS generated from a seed, served over HTTP with the API's
envelope, errors and query semantics, plus switchable reproductions of the
pitfalls the replication guide warns about (filter cache, ``_skip`` shifts,
rate limits, faults). See ``docs/emulator.md``.
"""

import logging

from devstack.emulator.config import EmulatorConfig
from devstack.emulator.server import Emulator

__all__ = ["Emulator", "EmulatorConfig"]

logger = logging.getLogger(__name__)
