"""Benchmark: the delivery sensor registering 10 000 newly delivered cells.

Runs `ard_delivery_sensor` tick after tick over a generated listing of 10 000 cells (the listing of
bench_discovery.py, served from memory in place of S3) against a real SQLite Dagster instance, applying
each tick as the daemon does: its new partitions added and its cursor kept. Prints seconds per 10 000
cells for the whole registration, the slowest tick next to Dagster's 60 s sensor evaluation limit, the
largest tick's serialized size next to the 100 MB gRPC limit, and discovery of the same listing (the
floor: a sensor cannot be faster than discovering) measured in the same run.
Usage: python benchmarks/bench_delivery_sensor.py [--cells 10000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_discovery import generated_listing  # noqa: E402
from dagster import DagsterInstance, build_sensor_context  # noqa: E402
from dagster._serdes import serialize_value  # noqa: E402

from imagesim_pipeline.ard.discovery import discover  # noqa: E402
from imagesim_pipeline.orchestration.partitions import ard_cells  # noqa: E402
from imagesim_pipeline.orchestration.resources import BucketResource  # noqa: E402
from imagesim_pipeline.orchestration.sensors import MAX_NEW_CELLS_PER_TICK, ard_delivery_sensor  # noqa: E402
from imagesim_pipeline.storage import LocalBucket  # noqa: E402

SENSOR_LIMIT_S = 60  # Dagster's default sensor evaluation timeout (DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS)
GRPC_LIMIT_BYTES = 100 * 1024 * 1024  # Dagster's default gRPC message limit (DAGSTER_GRPC_MAX_RX_BYTES)


class ListedBucket(LocalBucket):
    """A bucket whose listing is the generated one (S3's listing, without the network)."""

    listing: list = []

    def list(self, prefix: str = ""):
        return iter([o for o in self.listing if o.key.startswith(prefix)])


class ListedBucketResource(BucketResource):
    def get_bucket(self):
        return ListedBucket(self.uri)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=10_000)
    args = parser.parse_args()
    ListedBucket.listing = generated_listing(args.cells, acquisitions=2)
    started = time.perf_counter()
    discover(ListedBucket.listing)
    t_discover = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as home:
        instance = DagsterInstance.local_temp(home)
        resource = ListedBucketResource(uri=home)
        cursor, ticks, registered, requests = None, [], 0, 0
        total = time.perf_counter()
        while registered < args.cells:
            started = time.perf_counter()
            result = ard_delivery_sensor(build_sensor_context(instance=instance, cursor=cursor,
                                                              resources={"bucket": resource}))
            evaluated = time.perf_counter() - started
            size = len(serialize_value(result.run_requests)) + len(serialize_value(
                result.dynamic_partitions_requests))
            for request in result.dynamic_partitions_requests:  # what the daemon does with the tick
                instance.add_dynamic_partitions(ard_cells.name, list(request.partition_keys))
                registered += len(request.partition_keys)
            requests += len(result.run_requests)
            cursor = result.cursor
            ticks.append((evaluated, time.perf_counter() - started, size))
            print(f"  tick {len(ticks)}: {len(result.run_requests)} run requests, evaluated in {evaluated:.2f} s, "
                  f"applied in {ticks[-1][1]:.2f} s, {size / 1e6:.1f} MB", flush=True)
        total = time.perf_counter() - total
        assert len(instance.get_dynamic_partitions(ard_cells.name)) == args.cells == requests
    per_10k = total * 10_000 / args.cells
    print(f"{args.cells} cells registered in {len(ticks)} ticks of at most {MAX_NEW_CELLS_PER_TICK}: "
          f"{per_10k:.1f} s per 10 000 cells")
    print(f"slowest tick evaluation: {max(t[0] for t in ticks):.2f} s (limit {SENSOR_LIMIT_S} s); largest tick "
          f"result: {max(t[2] for t in ticks) / 1e6:.1f} MB (limit {GRPC_LIMIT_BYTES / 1e6:.0f} MB)")
    print(f"floor, discovery of the same listing: {t_discover:.2f} s; sensor/discovery per tick: "
          f"{sum(t[0] for t in ticks) / len(ticks) / t_discover:.1f}x")


if __name__ == "__main__":
    main()
