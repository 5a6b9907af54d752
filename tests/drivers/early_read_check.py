"""A fresh driver (no Ray running): the launcher returns once the prestarted Blenders said
hello, and the dataset reads them directly until their actors take over (read_before_ray).
Reports what it saw as JSON. ``main``: read in this process, pausing until the group is up so
that the driver holds unread items at the hand-over; ``workers``: two DataLoader workers."""
import json
import os
import sys
import time

import numpy as np
import psutil

from blendtorch_ray import BlenderLauncher, make_loader

def main() -> None:
    mode, script = sys.argv[1], sys.argv[2]
    out = {"driver": os.getpid()}
    with BlenderLauncher(script=script, num_instances=2, instance_args=[["--size", "64"]] * 2) as bl:
        early = bl._early
        out["prestarted"] = [p.pid for p in bl._prestarted]
        items = []
        if mode == "main":
            ds = bl.dataset(timeout=60)
            it = iter(ds)
            items += [next(it) for _ in range(8)]
            out["first_before_up"] = not early.up.done()  # the first items came before Ray was up
            early.wait_up()  # Blender renders ahead meanwhile: the driver holds unread items
            out["leftovers"] = [len(r.state.leftovers) for r in early.readers.values()]
            items += [next(it) for _ in range(80)]
            out["paths"] = ds.path_counts
        else:
            for batch in make_loader(bl.dataset(max_items=64), batch_size=8, num_workers=2):
                items += [{"btid": b, "seq": s, "arr": a} for b, s, a in
                          zip(batch["btid"].tolist(), batch["seq"].tolist(), batch["arr"].numpy())]
        health = bl.health()
        out["pids"] = bl.pids()
        out["parents"] = [psutil.Process(p).ppid() for p in out["pids"]]
        out["restarts"] = [h.restarts for h in health]
        out["health_items"] = [h.items for h in health]
        out["fps"] = [h.fps for h in health]
        seqs = {b: [i["seq"] for i in items if i["btid"] == b] for b in (0, 1)}
        out["contiguous"] = {b: s == list(range(len(s))) for b, s in seqs.items()}
        out["counts"] = {b: len(s) for b, s in seqs.items()}
        out["arrays_ok"] = all(np.all(np.asarray(i["arr"]) == i["seq"]) for i in items)
        out["dirs"] = [p.dir for p in bl._prestarted] + [p.memory_dir for p in bl._prestarted]
    print("RESULT", json.dumps(out), flush=True)


if __name__ == "__main__":  # DataLoader workers (forkserver) import this file again
    main()
