"""A tiny seeded next-byte model trained the way an operator's job is: skyshift runs it on both clouds.

It reads its dataset from `SKYSHIFT_DATA_<NAME>`, logs each step to `SKYSHIFT_METRICS` (through
`skyshift.jobs.log` when skyshift is importable, else by writing the lines itself) and writes the
final weights to `SKYSHIFT_OUTPUT/model.safetensors`. Under torchrun (WORLD_SIZE > 1) it trains with
DistributedDataParallel on `SKYSHIFT_DIST_BACKEND` (gloo on CPU, nccl on GPUs).

Switches a *worker* can set, so that one side of a comparison behaves differently:

| variable | effect |
|---|---|
| `TRAIN_SOFTMAX_FP16=1` | softmax (attention and output) computed in float16: the budget-cloud bug |
| `TRAIN_NOISE=1e-6` | relative Gaussian noise on every gradient, from an unseeded generator: stands in for GPU |
|  | nondeterminism (atomics, reduction order) |
| `TRAIN_CRASH_AT=N` | raise at step N (exit 1 with a traceback) |
| `TRAIN_HANG_AT=N` | at step N start a sleeping child process and hang, ignoring SIGTERM |
| `TRAIN_DEVICE=cpu|cuda` | default: cuda when available |
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

CONTEXT = 8

try:
    from skyshift.jobs import log
except ImportError:  # the contract is only a file format: a job need not import skyshift

    def log(step: int, **metrics: float) -> None:
        path = os.environ.get("SKYSHIFT_METRICS")
        if path and os.environ.get("RANK", "0") == "0":
            with open(path, "a") as out:
                out.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    if os.environ.get("TRAIN_SOFTMAX_FP16") == "1":
        return torch.softmax(x.half(), dim=dim).float()
    return torch.softmax(x, dim=dim)


class NextByte(torch.nn.Module):
    """Embedding, one attention head over the context, an MLP: small, but every op a real model has."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(256, width)
        self.position = torch.nn.Parameter(torch.zeros(CONTEXT, width))
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width * CONTEXT, 128), torch.nn.GELU(), torch.nn.Linear(128, 256)
        )

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        h = self.embed(context) + self.position
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        attention = softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5)
        return self.mlp((h + attention @ v).flatten(1))


def read_tokens(dataset: str, limit: int, seed: int) -> torch.Tensor:
    variable = "SKYSHIFT_DATA_" + dataset.upper().replace("-", "_")
    root = os.environ.get(variable)
    if not root:
        sys.exit(f"{variable} is not set: list '{dataset}' in the job's `uses`")
    data = bytearray()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        with open(path, "rb") as stream:
            data += stream.read(limit - len(data))
        if len(data) >= limit:
            break
    if len(data) < CONTEXT + 2:
        sys.exit(f"{root}: {len(data)} bytes is too little to train on")
    return torch.frombuffer(data, dtype=torch.uint8).long()


def hang(step: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    print(f"hanging at step {step}", file=sys.stderr, flush=True)
    while True:
        time.sleep(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--dataset", default="corpus", help="the dataset's name in the plan")
    parser.add_argument("--sample-bytes", type=int, default=1 << 16)
    args = parser.parse_args()

    torch.set_num_threads(1)
    seed = int(os.environ.get("SKYSHIFT_SEED", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    wanted = os.environ.get("TRAIN_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if wanted == "cuda" else "cpu")
    if world > 1:
        torch.distributed.init_process_group(backend=os.environ.get("SKYSHIFT_DIST_BACKEND", "gloo"))
    noise = float(os.environ.get("TRAIN_NOISE", "0"))
    crash_at = int(os.environ.get("TRAIN_CRASH_AT", "-1"))
    hang_at = int(os.environ.get("TRAIN_HANG_AT", "-1"))

    tokens = read_tokens(args.dataset, args.sample_bytes, seed)
    torch.manual_seed(seed)
    model = NextByte().to(device)
    trained = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    parameters = list(model.parameters())
    # SGD with momentum by hand: torch.optim imports torch._dynamo, seconds of start-up per run.
    velocity = [torch.zeros_like(p) for p in parameters]
    batches = torch.Generator().manual_seed(seed + rank)  # each rank its own shard of the batches
    jitter = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    for step in range(args.steps):
        if step == crash_at:
            raise RuntimeError(f"injected crash at step {step} (TRAIN_CRASH_AT)")
        if step == hang_at:
            hang(step)
        starts = torch.randint(0, len(tokens) - CONTEXT - 1, (args.batch_size,), generator=batches)
        windows = torch.stack([tokens[s : s + CONTEXT + 1] for s in starts.tolist()]).to(device)
        probabilities = softmax(trained(windows[:, :CONTEXT]))
        loss = F.nll_loss(torch.log(probabilities + 1e-12), windows[:, CONTEXT])
        for p in parameters:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            if noise:
                for p in parameters:
                    p.grad += noise * p.grad.abs() * torch.randn(p.shape, generator=jitter).to(device)
            grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in parameters]))
            for p, v in zip(parameters, velocity, strict=True):
                v.mul_(0.9).add_(p.grad)
                p.sub_(args.lr * v)
        reported = loss.detach().clone()
        if world > 1:  # the mean over ranks (gloo has no AVG)
            torch.distributed.all_reduce(reported)
            reported /= world
        log(step, loss=float(reported), grad_norm=float(grad_norm), samples=args.batch_size * world)
    if rank == 0:
        out = Path(os.environ.get("SKYSHIFT_OUTPUT", "."))
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
