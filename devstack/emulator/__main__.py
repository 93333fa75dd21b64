"""``python -m devstack.emulator``: the same as ``spark-relay emulator``."""

import logging

from devstack.emulator.cli import emulator_command

__all__: list[str] = []

logger = logging.getLogger(__name__)

if __name__ == "__main__":
    emulator_command(prog_name="python -m devstack.emulator")
