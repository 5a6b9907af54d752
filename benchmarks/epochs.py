"""Epochs: what the boundary between two epochs of ``max_items`` costs.

    python benchmarks/epochs.py [--items 64] [--epochs 4] [--repeat 3] [--instances 2]

The cube scene (Workbench, 640x480), DataLoader batches of 8. Each row reads ``--epochs``
epochs of ``--items`` items from the same dataset, after one warm-up epoch, and the table
shows medians and the spread over ``--repeat`` rounds (each round measures every row once, in
this order, with its own launcher):
  * one stream        : the reference, one epoch of epochs x items after the same warm-up
                        epoch (no boundary at all);
  * kept streams      : the main process iterates the dataset again each epoch (the streams
                        an epoch leaves open are read on: blendtorch_ray/open_streams.py);
  * reopened streams  : the same, with ``ds.close()`` after each epoch: every epoch opens its
                        streams again where the dataset stands, so each Blender starts again
                        there (what every epoch did before streams were kept);
  * persistent workers : ``make_loader(num_workers=2, persistent_workers=True)``;
  * new workers each epoch : ``make_loader(num_workers=2)`` (DataLoader's default: new
                        worker processes, each connecting to Ray, every epoch).
Columns: items/s over all epochs (clock from the warm-up's end), its ratio to one stream, and
the median time from an epoch's start to its first batch. Compare the ratios, not the
absolute numbers: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import table  # noqa: E402

ROWS = ("one stream", "kept streams", "reopened streams", "persistent workers", "new workers each epoch")


def _epochs(loader_of, epochs: int, between=None, warm_up=None) -> tuple[float, float]:
    """Read one warm-up epoch (then call ``warm_up``), then ``epochs`` epochs, calling
    ``between`` after each; return (items/s, median seconds to an epoch's first batch)."""
    for _ in loader_of():
        pass
    for after in (between, warm_up):
        if after:
            after()
    firsts, items = [], 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        start = time.perf_counter()
        for i, batch in enumerate(loader_of()):
            if i == 0:
                firsts.append(time.perf_counter() - start)
            items += len(batch["seq"])
        if between:
            between()
    return items / (time.perf_counter() - t0), statistics.median(firsts)


def measure(row: str, items: int, epochs: int, instances: int) -> tuple[float, float]:
    from blender_worker.scenes import CUBE
    from blendtorch_ray import BlenderLauncher, make_loader

    with BlenderLauncher(script=CUBE, num_instances=instances) as bl:
        ds = bl.dataset(max_items=items)
        if row == "one stream":  # the same warm-up, then all epochs' items as one
            loader = make_loader(ds, batch_size=8)
            return _epochs(lambda: loader, 1, warm_up=lambda: setattr(ds, "max_items", items * epochs))
        if row == "kept streams":
            loader = make_loader(ds, batch_size=8)
            return _epochs(lambda: loader, epochs)
        if row == "reopened streams":
            loader = make_loader(ds, batch_size=8)
            return _epochs(lambda: loader, epochs, between=ds.close)
        persistent = row == "persistent workers"
        loader = make_loader(ds, batch_size=8, num_workers=2, persistent_workers=persistent)
        try:
            return _epochs(lambda: loader, epochs)
        finally:
            del loader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=64, help="items per epoch")
    ap.add_argument("--epochs", type=int, default=4, help="epochs timed, after one warm-up epoch")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the table shows medians")
    ap.add_argument("--instances", type=int, default=2, help="Blender instances")
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows to measure")
    args = ap.parse_args()
    rows = [r.strip() for r in args.rows.split(",")]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; choose from {list(ROWS)}")
    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    results: dict = {r: [] for r in rows}
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    for k in range(args.repeat):
        for row in rows:
            rate, first = measure(row, args.items, args.epochs, args.instances)
            results[row].append((rate, first))
            print(f"round {k + 1} {row}: {rate:.1f} items/s, first batch {first:.3f} s", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    ref = statistics.median(r for r, _ in results["one stream"]) if "one stream" in results else None
    out = []
    for row in rows:
        rates = [r for r, _ in results[row]]
        med = statistics.median(rates)
        out.append((row, f"{med:.1f}", f"{min(rates):.1f}-{max(rates):.1f}",
                    f"{med / ref:.2f}" if ref else "-",
                    f"{statistics.median(f for _, f in results[row]):.3f}"))
    print(table(("row", "items/s", "spread", "vs one stream", "s to an epoch's first batch"), out,
                title=f"{args.epochs} epochs of {args.items} items, {args.instances} cube instances, "
                      f"batches of 8, medians of {args.repeat}"))


if __name__ == "__main__":
    main()
