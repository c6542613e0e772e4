"""What an inspection of a checkpoint reports: formats, tensors with digests, training state, environment.

Pure pydantic (no torch at import) so the CLI and workflows can use these models cheaply. Models that
travel through workflow history give every field added later a default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from activities.stores import StoreSpec

Format = Literal["torch", "safetensors", "dcp"]
Category = Literal["model", "optimizer", "dataloader", "rng", "other"]

#: At most this many tensors (~260 bytes each as JSON) and non-tensor names travel in an inspection result,
#: so it stays near the 256 KB payloads DESIGN asks for (a 7B model has ~300 tensors); the digest root still
#: covers every tensor.
MAX_TENSORS_IN_RESULT = 800
MAX_VALUES_IN_RESULT = 200


class TensorInfo(BaseModel):
    name: str = Field(description="Dotted name, as DCP flattens nested state (`optim.state.0.exp_avg`)")
    dtype: str = Field(description="torch dtype name without `torch.`: float32, bfloat16, float8_e4m3fn")
    shape: list[int]
    bytes: int
    digest: str | None = Field(None, description="BLAKE3 of the tensor's C-contiguous bytes (tensor_digest)")
    category: Category = "model"
    device: str | None = Field(None, description="Device the file records for the tensor's storage (torch files)")
    file: str | None = Field(None, description="Key of the file holding it, relative to the checkpoint path")
    rank: int | None = Field(None, description="DCP: the rank whose file holds its first chunk")

    @property
    def numel(self) -> int:
        n = 1
        for size in self.shape:
            n *= size
        return n


class FileInfo(BaseModel):
    key: str = Field(description="Relative to the checkpoint path")
    format: Format | Literal["index", "metadata", "other"]
    bytes: int


class StateSummary(BaseModel):
    """Which kinds of training state the checkpoint holds (names classified by `state.STATE_PATTERNS`)."""

    model_tensors: int = 0
    optimizer_tensors: int = 0
    optimizer_values: int = 0
    dataloader: list[str] = Field(default_factory=list, description="Names of dataloader/sampler state")
    rng: list[str] = Field(default_factory=list, description="Names of RNG state")
    other_values: int = 0

    @property
    def optimizer(self) -> bool:
        return bool(self.optimizer_tensors or self.optimizer_values)


class RankState(BaseModel):
    """DCP: what one saving rank wrote, and which per-rank state (keys naming that rank) exists for it."""

    rank: int
    files: list[str] = Field(default_factory=list)
    bytes: int = 0
    items: int = 0
    dataloader: list[str] = Field(default_factory=list)
    rng: list[str] = Field(default_factory=list)
    optimizer: list[str] = Field(default_factory=list)


class DeviceFacts(BaseModel):
    name: str
    index: int
    capability: str | None = Field(None, description="CUDA compute capability, e.g. 8.0")
    memory_gb: float | None = None


class WorkerEnvironment(BaseModel):
    """The software and devices of the worker that read the checkpoint."""

    environment: str = ""
    torch_version: str = ""
    cuda_version: str | None = None
    python_version: str = ""
    devices: list[DeviceFacts] = Field(default_factory=list)


class CheckpointInspection(BaseModel):
    url: str = Field(description="Store URL and path that was inspected")
    format: Format
    files: list[FileInfo]
    tensors: list[TensorInfo] = Field(description=f"Sorted by name; at most {MAX_TENSORS_IN_RESULT}")
    tensors_total: int
    tensors_truncated: bool = False
    tensor_bytes: int
    parameters: int = Field(description="Elements of floating-point model tensors: the real parameter count")
    parameter_bytes: int = Field(0, description="Bytes of those tensors as stored")
    dtypes: dict[str, int] = Field(default_factory=dict, description="Model parameters per dtype")
    digest_root: str = Field(description="digest_root over every tensor's (name, digest)")
    state: StateSummary = Field(default_factory=StateSummary)
    values: list[str] = Field(default_factory=list, description="Non-tensor entries (DCP bytes items, Python values)")
    world_size: int | None = Field(None, description="DCP: ranks that saved it")
    ranks: list[RankState] = Field(default_factory=list)
    recorded: dict[str, str] = Field(default_factory=dict, description="Versions/metadata the files record")
    devices: list[str] = Field(default_factory=list, description="Devices the files record for tensors")
    environment: WorkerEnvironment | None = None

    def digests(self) -> dict[str, str | None]:
        return {t.name: t.digest for t in self.tensors}


class InspectInput(BaseModel):
    store: StoreSpec
    path: str = Field("", description="Checkpoint file or directory, relative to the store root")
    environment: str = ""
    digests: bool = Field(True, description="Hash every tensor (reads all bytes); False reads headers only")


class FileScan(BaseModel):
    """What one format reader found in one file (or one DCP checkpoint), before `inspect` sums it up."""

    tensors: list[TensorInfo] = Field(default_factory=list)
    values: list[str] = Field(default_factory=list, description="Names of non-tensor entries")
    recorded: dict[str, str] = Field(default_factory=dict)
    world_size: int | None = None
    ranks: list[RankState] = Field(default_factory=list)
