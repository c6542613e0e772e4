"""Seeded training on an environment's own copy of the data: the parallel run's workload.

Both environments train the same tiny next-byte model, with the same seed, on the first bytes of
the same dataset object read from *their own* storage. Identical data and numerics give identical
loss curves; a corrupted copy, a different kernel or a numerics drift shows up as divergence.
"""

from __future__ import annotations

import math
import time
from typing import Any

import blake3
from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.analysis import Check, Verdict, relative_change_pct, verdict
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


# -- how two runs compare: the parallel run's judge for plans without jobs -------------------------


class CompareTrainingInput(BaseModel):
    source: TrainResult
    target: TrainResult
    loss_divergence_pct: float


def _worst_divergence_pct(source: list[float], target: list[float]) -> float:
    if len(source) != len(target) or not source:
        return math.inf
    return max(abs(relative_change_pct(a, b)) for a, b in zip(source, target, strict=True))


def _curve_check(metric: str, source: list[float], target: list[float], limit: float) -> Check:
    worst = _worst_divergence_pct(source, target)
    return Check(
        metric=metric,
        outcome="pass" if worst <= limit else "fail",
        source=source[-1] if source else None,
        target=target[-1] if target else None,
        observed=round(worst, 6),
        threshold=limit,
        detail=f"largest per-step divergence {worst:.4g}% over {len(source)} steps (allowed {limit}%)",
    )


def judge_training(request: CompareTrainingInput) -> Verdict:
    s, t, limit = request.source, request.target, request.loss_divergence_pct
    params = abs(relative_change_pct(s.param_norm, t.param_norm))
    same_data = s.data_blake3 == t.data_blake3 and s.object_key == t.object_key
    checks = [
        _curve_check("loss_curve", s.losses, t.losses, limit),
        _curve_check("grad_norm_curve", s.grad_norms, t.grad_norms, limit),
        Check(
            metric="final_params",
            outcome="pass" if params <= limit else "fail",
            source=s.param_norm,
            target=t.param_norm,
            observed=round(params, 6),
            threshold=limit,
            detail=(
                "bit-identical final tensors" if s.param_digest == t.param_digest else "final tensors differ bitwise"
            )
            + f", parameter norm differs {params:.4g}%",
        ),
        Check(
            metric="training_data",
            outcome="pass" if same_data else "fail",
            detail=f"both sides trained on identical bytes of {s.object_key}"
            if same_data
            else f"training bytes differ: {s.object_key} {s.data_blake3[:12]} vs {t.object_key} {t.data_blake3[:12]}",
        ),
    ]
    return verdict("parallel_run", checks)


@activity.defn
def compare_training(request: CompareTrainingInput) -> Verdict:
    return judge_training(request)
