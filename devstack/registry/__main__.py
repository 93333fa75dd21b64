"""Run the dev Schema Registry in the foreground: ``python -m devstack.registry``.

For trying the registry by hand; the devstack and the tests start
``RegistryServer`` in-process instead.
"""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

from devstack.registry.server import RegistryServer

__all__ = ["main"]

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, serve until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m devstack.registry",
        description="Dev/test stand-in for Confluent Schema Registry (AVRO only), "
        "listening on 127.0.0.1 and persisting schemas under --state-dir.",
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="where schemas are kept")
    parser.add_argument("--port", type=int, default=8081, help="TCP port (default 8081)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with RegistryServer(args.state_dir, port=args.port) as server:
        print(f"schema registry at {server.url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
