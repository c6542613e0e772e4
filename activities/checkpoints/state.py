"""Which kind of training state a checkpoint entry is (model, optimizer, dataloader, RNG), and whose rank.

Checkpoints do not label their parts; names do. The conventions of torch, Lightning, HF Trainer,
DeepSpeed and torchtitan are rows of `STATE_PATTERNS` (a name segment matching a row's pattern puts the
entry in that category, first row wins), so a new convention is a new row, not a new branch.
"""

from __future__ import annotations

import re

from activities.checkpoints.models import Category

STATE_PATTERNS: list[tuple[Category, re.Pattern[str]]] = [
    ("model", re.compile(r"^(model|models|module|state_dict|model_state_dict|model_state|params|ema|model_ema)$",
                         re.I)),
    ("rng", re.compile(r"^(rng|rngs|rng_state|rng_states|.*_rng_state|.*_rng|rng_tracker|random|random_state|"
                       r"generator|generators|torch_rng|cuda_rng|numpy_rng|python_rng|cpu_rng)$", re.I)),
    ("dataloader", re.compile(r"^(dataloader|dataloaders|data_loader|train_dataloader|loader|sampler|"
                              r"data_state|dataset_state|dataloader_state|stateful_dataloader)$", re.I)),
    ("optimizer", re.compile(r"^(optimizer|optimizers|optim|optimizer_states|optimizer_state|"
                             r"optimizer_state_dict|opt|param_groups|exp_avg|exp_avg_sq|momentum_buffer|"
                             r"max_exp_avg_sq)$", re.I)),
    ("other", re.compile(r"^(lr_scheduler|lr_schedulers|scheduler|schedulers|scaler|grad_scaler|"
                         r"callbacks|loops|hyper_parameters|hparams|args|config|trainer_state)$", re.I)),
]  # fmt: skip
#: A name segment that says which rank the entry belongs to: `rank_3`, `rank3`, `rank-3`.
RANK_SEGMENT = re.compile(r"(?:^|_)rank[_-]?(\d+)$", re.I)


def classify(name: str, dtype: str | None = None) -> Category:
    """The category of a dotted name: the first segment (from the left) matching a pattern decides.

    RNG states are integer tensors (torch's generator state is a uint8 tensor): a floating-point tensor
    under a name like `generator.` is a model's weights (a GAN's generator), not RNG state.
    """
    for segment in name.split("."):
        base = RANK_SEGMENT.sub("", segment) or segment
        for category, pattern in STATE_PATTERNS:
            if pattern.match(segment) or pattern.match(base):
                if category == "rng" and dtype is not None and dtype.startswith(("float", "bfloat", "complex")):
                    return "model"
                return category
    return "model"


def rank_of(name: str) -> int | None:
    """The rank a name is specific to (`dataloader.rank_1.pos` -> 1), None when it names no rank."""
    for segment in name.split("."):
        match = RANK_SEGMENT.search(segment)
        if match:
            return int(match.group(1))
    return None


def state_group(name: str) -> str:
    """The entry a name belongs to, for reports: the name up to the segment that classified it, plus a rank
    segment right after it (`dataloader.rank_0.epoch` -> `dataloader.rank_0`, `rng_state.cpu` -> `rng_state`)."""
    segments = name.split(".")
    for i, segment in enumerate(segments):
        base = RANK_SEGMENT.sub("", segment) or segment
        if any(p.match(segment) or p.match(base) for category, p in STATE_PATTERNS if category != "model"):
            end = i + 2 if i + 1 < len(segments) and RANK_SEGMENT.search(segments[i + 1]) else i + 1
            return ".".join(segments[:end])
    return name
