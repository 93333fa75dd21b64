"""How fast the Spark API emulator serves a full page, next to plain JSON serialisation.

Run: ``.venv/bin/python bench/bench_emulator.py [--listings 5000] [--repeat 20]``

Measured side by side in one run (medians): a full 1000-listing page over
HTTP (httpx, keep-alive), a ``_select=ListingKey`` page, and, in-process, the
time to ``orjson.dumps`` and ``json.dumps`` the same 1000 records. The ratios
say how close serving comes to the floor of producing the bytes at all.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import httpx
import orjson

from devstack.emulator import Emulator, EmulatorConfig

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--listings", type=int, default=5000, help="listings generated (default 5000)"
    )
    parser.add_argument(
        "--repeat", type=int, default=20, help="repetitions per measurement (default 20)"
    )
    args = parser.parse_args()

    t0 = time.perf_counter()
    emulator = Emulator(EmulatorConfig(listings=args.listings, seed=7))
    setup_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    emulator.mls.warm()
    warm_ms = (time.perf_counter() - t0) * 1000
    with (
        emulator,
        httpx.Client(
            base_url=emulator.url,
            timeout=30,
            headers={"Authorization": f"Bearer {emulator.config.api_key}"},
        ) as client,
    ):
        full = {"_limit": 1000, "_skiptoken": ""}
        keys_only = {"_limit": 1000, "_skiptoken": "", "_select": "ListingKey"}
        page = client.get("/v1/listings", params=full)
        page.raise_for_status()
        size = len(page.content)
        records = page.json()["D"]["Results"]
        client.get("/v1/listings", params=keys_only).raise_for_status()

        http_full = _median_ms(
            lambda: client.get("/v1/listings", params=full).raise_for_status(), args.repeat
        )
        http_keys = _median_ms(
            lambda: client.get("/v1/listings", params=keys_only).raise_for_status(), args.repeat
        )
        orjson_ms = _median_ms(
            lambda: orjson.dumps({"D": {"Success": True, "Results": records}}), args.repeat
        )
        json_ms = _median_ms(
            lambda: json.dumps({"D": {"Success": True, "Results": records}}), args.repeat
        )

    print(
        f"listings generated: {args.listings} (state {setup_ms:.0f} ms, all records built {warm_ms:.0f} ms, "
        f"{warm_ms * 1000 / max(args.listings, 1):.0f} us/listing)"
    )
    print(
        f"full page, 1000 listings, {size / 1e6:.2f} MB: {http_full:7.2f} ms over HTTP (median of {args.repeat})"
    )
    print(f"_select=ListingKey page, 1000 keys:        {http_keys:7.2f} ms over HTTP")
    print(f"orjson.dumps of the same 1000 records:     {orjson_ms:7.2f} ms in-process")
    print(f"json.dumps of the same 1000 records:       {json_ms:7.2f} ms in-process")
    print(f"ratio HTTP full page / orjson.dumps:       {http_full / orjson_ms:7.2f}x")
    print(f"ratio HTTP full page / json.dumps:         {http_full / json_ms:7.2f}x")


if __name__ == "__main__":
    main()
