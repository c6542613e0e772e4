"""Seeded training on an environment's own copy of the data: the parallel run's workload.

Both environments train the same tiny next-byte model, with the same seed, on the first bytes of
the same dataset object read from *their own* storage. Identical data and numerics give identical
loss curves; a corrupted copy, a different kernel or a numerics drift shows up as divergence.
"""

from __future__ import annotations

import time
from typing import Any

import blake3
from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import fail_fast_on_permanent_errors
from activities.stores import StoreSpec, open_store
from activities.transfer.layout import user_objects

CONTEXT = 8


class TrainInput(BaseModel):
    environment: str
    store: StoreSpec
    dataset_path: str
    object_key: str | None = Field(None, description="Train on this object; default: the first one listed")
    seed: int
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    sample_bytes: int = Field(ge=CONTEXT + 2)


class TrainResult(BaseModel):
    environment: str
    object_key: str
    data_blake3: str = Field(description="Digest of the bytes trained on")
    losses: list[float]
    grad_norms: list[float]
    param_digest: str = Field(description="BLAKE3 of the final parameters, in order")
    param_norm: float
    seconds: float


def _next_byte_model():
    """The probe model (torch is imported here: the models above are read by CLI commands that must start fast)."""
    import torch

    class NextByte(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(256, 16)
            self.mlp = torch.nn.Sequential(
                torch.nn.Linear(16 * CONTEXT, 128), torch.nn.Tanh(), torch.nn.Linear(128, 256)
            )

        def forward(self, context: torch.Tensor) -> torch.Tensor:
            return self.mlp(self.embed(context).flatten(1))

    return NextByte()


def train_on_bytes(
    data: bytes, seed: int, steps: int, batch_size: int, on_step=lambda step: None
) -> tuple[list[float], list[float], Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    model = _next_byte_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses, norms = [], []
    for step in range(steps):
        on_step(step)
        starts = torch.randint(0, len(tokens) - CONTEXT - 1, (batch_size,), generator=generator)
        windows = torch.stack([tokens[s : s + CONTEXT + 1] for s in starts.tolist()])
        loss = torch.nn.functional.cross_entropy(model(windows[:, :CONTEXT]), windows[:, CONTEXT])
        optimizer.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e9)))
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses, norms, model


@activity.defn
@fail_fast_on_permanent_errors
def train_seeded(request: TrainInput) -> TrainResult:
    started = time.monotonic()
    store = open_store(request.store)
    if request.object_key is not None:
        chosen = store.info(request.object_key)
        if chosen is None:
            raise ApplicationError(
                f"{store.url}/{request.object_key}: missing on {request.environment}", non_retryable=True
            )
    else:
        chosen = next(iter(user_objects(store, request.dataset_path)), None)
        if chosen is None:
            raise ApplicationError(f"{store.url}/{request.dataset_path}: no objects to train on", non_retryable=True)
    data = store.read_bytes(chosen.key, 0, min(chosen.size, request.sample_bytes))
    if len(data) < CONTEXT + 2:
        raise ApplicationError(
            f"{store.url}/{chosen.key}: {len(data)} bytes is too little to train on", non_retryable=True
        )
    import torch

    # One thread: float reductions then happen in the same order on every machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses, norms, model = train_on_bytes(
            data, request.seed, request.steps, request.batch_size, on_step=lambda step: activity.heartbeat(step)
        )
    finally:
        torch.set_num_threads(threads)
    digest = blake3.blake3()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return TrainResult(
        environment=request.environment,
        object_key=chosen.key,
        data_blake3=blake3.blake3(data).hexdigest(),
        losses=losses,
        grad_norms=norms,
        param_digest=digest.hexdigest(),
        param_norm=float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters()))),
        seconds=round(time.monotonic() - started, 3),
    )
