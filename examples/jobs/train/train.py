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
| `TRAIN_RESUME_BREAK=dataloader|rng|optimizer` | a broken resume: that part of the state is not restored |
| `TRAIN_RESUME_BREAK=sigterm` | SIGTERM ignored (a job that does not follow the resume contract) |

Resumable (skyshift's resume contract, `skyshift.jobs`): with `SKYSHIFT_CHECKPOINT_DIR` set it
checkpoints every `SKYSHIFT_CHECKPOINT_EVERY` steps and, on SIGTERM, after the step in progress,
then exits 0; with `SKYSHIFT_RESUME_FROM` it restores the weights, the optimizer's momentum, the
dropout RNG and the dataloader's position and goes on from the next step, bit for bit the run it
continues (on CPU).
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
    from skyshift.jobs import checkpoint_every, checkpoint_step, handle_sigterm, log, resume_from, save_checkpoint
except ImportError:  # the contract is only a file format: a job need not import skyshift (it is then not resumable)

    def checkpoint_every(default=None):
        return None

    def checkpoint_step(directory):
        return None

    def handle_sigterm():
        return lambda: False

    def resume_from():
        return None

    def save_checkpoint(step, write, keep=2):
        return None

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

    def __init__(self, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout
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
        mixed = F.dropout((h + attention @ v).flatten(1), self.dropout, self.training)  # draws on torch's RNG
        return self.mlp(mixed)


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


STATE = "state.pt"


def save_state(directory: Path, model, velocity, batches: torch.Generator) -> None:
    """Everything the next step depends on: weights, momentum, the dropout RNG, the dataloader's position."""
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "velocity": [v.detach().cpu() for v in velocity],
        "rng": torch.get_rng_state(),
        "batches": batches.get_state(),
    }
    torch.save(state, directory / STATE)


def restore_state(directory: Path, model, velocity, batches: torch.Generator) -> int:
    """Load a checkpoint (weights_only: no pickled code runs); returns the step to go on from."""
    step = checkpoint_step(directory)
    if step is None:
        sys.exit(f"{directory}: not a complete checkpoint (no skyshift-checkpoint.json)")
    state = torch.load(directory / STATE, weights_only=True)
    broken = os.environ.get("TRAIN_RESUME_BREAK", "")
    model.load_state_dict(state["model"])
    if broken != "optimizer":
        for v, saved in zip(velocity, state["velocity"], strict=True):
            v.copy_(saved)
    if broken != "rng":
        torch.set_rng_state(state["rng"])
    if broken != "dataloader":
        batches.set_state(state["batches"])
    return step + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--dataset", default="corpus", help="the dataset's name in the plan")
    parser.add_argument("--sample-bytes", type=int, default=1 << 16)
    parser.add_argument("--dropout", type=float, default=0.1)
    args = parser.parse_args()
    stop_requested = handle_sigterm()
    if os.environ.get("TRAIN_RESUME_BREAK") == "sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

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
    model = NextByte(dropout=args.dropout).to(device)
    trained = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    parameters = list(model.parameters())
    # SGD with momentum by hand: torch.optim imports torch._dynamo, seconds of start-up per run.
    velocity = [torch.zeros_like(p) for p in parameters]
    batches = torch.Generator().manual_seed(seed + rank)  # each rank its own shard of the batches
    jitter = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    first = 0
    if (resuming := resume_from()) is not None:
        first = restore_state(resuming, model, velocity, batches)
        print(f"resumed from {resuming} at step {first}", file=sys.stderr, flush=True)
    every = checkpoint_every()

    def checkpoint(step: int) -> None:
        save_checkpoint(step, lambda directory: save_state(directory, model, velocity, batches))

    for step in range(first, args.steps):
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
        if stop_requested():  # SIGTERM: checkpoint the step just finished and exit 0
            checkpoint(step)
            print(f"checkpointed at step {step} on SIGTERM", file=sys.stderr, flush=True)
            if world > 1:
                torch.distributed.destroy_process_group()
            sys.exit(0)
        if every and (step + 1) % every == 0 and step + 1 < args.steps:
            checkpoint(step)
    if rank == 0:
        out = Path(os.environ.get("SKYSHIFT_OUTPUT", "."))
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
