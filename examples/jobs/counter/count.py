"""A job with no dependencies at all: it writes the SKYSHIFT_METRICS lines itself (the contract is a file format).

Used to show that a long job's history stays small (10,000 steps go by reference), as the
smallest possible example of the job contract, and (`--hang-at N`) as a job that hangs at step N
with a child process, ignoring SIGTERM: what a timeout or a cancellation must end as a whole.
"""

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=100)
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--hang-at", type=int, default=-1)
args = parser.parse_args()

seed = int(os.environ.get("SKYSHIFT_SEED", "0"))
with open(os.environ["SKYSHIFT_METRICS"], "a") as metrics:
    for step in range(args.steps):
        if step == args.hang_at:
            metrics.flush()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
            print(f"hanging at step {step}", file=sys.stderr, flush=True)
            while True:
                time.sleep(60)
        loss = 2.0 * math.exp(-step / 2000) + 0.01 * math.sin(step + seed)
        metrics.write(json.dumps({"step": step, "loss": loss, "samples": args.batch_size, "time": time.time()}) + "\n")
output = os.environ.get("SKYSHIFT_OUTPUT")
if output:
    with open(os.path.join(output, "summary.json"), "w") as out:
        data = {k: v for k, v in os.environ.items() if k.startswith("SKYSHIFT_DATA_")}
        json.dump({"steps": args.steps, "seed": seed, "arm": os.environ.get("SKYSHIFT_ARM"), "data": data}, out)
