"""Checkpoints read safely in every format and store, compared tensor by tensor, converted and judged on a
target: real files in moto S3, the GCS emulator and local directories; nothing mocked."""

from __future__ import annotations

import argparse
import io
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import blake3
import pytest
import torch
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.checkpoints.compare import compare_tensors, load_tensors, load_tensors_from_bytes
from activities.checkpoints.compat import CompatibilityInput, checkpoint_compatibility, memory_check
from activities.checkpoints.errors import MalformedCheckpointError, UnsafeCheckpointError
from activities.checkpoints.inspect import inspect_checkpoint, inspect_path
from activities.checkpoints.models import CheckpointInspection, InspectInput
from activities.checkpoints.reshard import ConvertInput, convert, convert_checkpoint
from activities.stores import StoreSpec, open_store
from tests import checkpoint_files as files
from tests.engine import sync

pytestmark = [pytest.mark.stack, pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]


def hand_digest(tensor: torch.Tensor) -> str:
    """BLAKE3 of the tensor's row-major bytes, computed through numpy (bf16 through its 16-bit pattern)."""
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return blake3.blake3(tensor.contiguous().numpy().tobytes()).hexdigest()


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run `skyshift ...` through starters.cli.main once the module is registered there, else its own parser
    with main's exit-code mapping for invalid input."""
    from starters import cli as entry
    from starters.cmd_checkpoint import add_commands
    from starters.common import UsageError

    if "starters.cmd_checkpoint" in entry.COMMAND_MODULES:
        code = entry.main(argv)
    else:
        parser = argparse.ArgumentParser(prog="skyshift")
        add_commands(parser.add_subparsers())
        args = parser.parse_args(argv)
        try:
            code = args.handler(args)
        except UsageError as error:
            print(f"skyshift: {error}", file=sys.stderr)
            code = 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def dcp_dir(tmp_path_factory) -> Path:
    return files.dcp_two_ranks(tmp_path_factory.mktemp("dcp") / "step-42")


@pytest.fixture(scope="module")
def evil(tmp_path_factory) -> dict[str, Path]:
    """A torch file and a DCP checkpoint whose pickles call io.open(marker, "w"), each proven dangerous: loaded
    the unsafe way (torch.load(weights_only=False), torch's own dcp_to_torch_save) in one child process, each
    creates its marker. The markers are removed; any test that finds one again has executed the pickle."""
    import torch.distributed.checkpoint as dcp

    root = tmp_path_factory.mktemp("evil")
    paths = {"torch_marker": root / "PWNED-torch", "dcp_marker": root / "PWNED-dcp"}
    paths["torch"] = files.evil_checkpoint(root / "src" / "ckpt.pt", paths["torch_marker"])
    paths["dcp"] = root / "dcp"
    dcp.save({"model": files.model_state(), "sampler": files.OpensFile(paths["dcp_marker"])},
             checkpoint_id=str(paths["dcp"]), no_dist=True)  # fmt: skip
    unsafe = (
        "import torch; from torch.distributed.checkpoint.format_utils import dcp_to_torch_save\n"
        f"torch.load({str(paths['torch'])!r}, weights_only=False)\n"
        f"try: dcp_to_torch_save({str(paths['dcp'])!r}, {str(root / 'out.pt')!r})\n"
        "except Exception: pass  # it saves what it loaded: an open file does not pickle"
    )
    subprocess.run([sys.executable, "-c", unsafe], capture_output=True, timeout=300)
    assert paths["torch_marker"].exists() and paths["dcp_marker"].exists()
    paths["torch_marker"].unlink()
    paths["dcp_marker"].unlink()
    return paths


def training_state() -> dict:
    model = files.model_state()
    return {
        "model": model,
        "optimizer": {"state": {0: {"exp_avg": torch.ones(16, 16)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "rng_state": torch.get_rng_state(),
        "dataloader": {"epoch": 2, "position": 640},
    }


def test_torch_file_in_s3_inspected_as_computed_by_hand(tmp_path, s3_bucket):
    state = training_state()
    local = files.save(tmp_path / "ckpt.pt", state)
    store = open_store(f"s3://{s3_bucket}")
    store.put_file("runs/7/ckpt.pt", local)

    report = inspect_path(store, "runs/7/ckpt.pt")

    flat = {f"model.{k}": v for k, v in state["model"].items()}
    flat |= {"optimizer.state.0.exp_avg": state["optimizer"]["state"][0]["exp_avg"], "rng_state": state["rng_state"]}
    assert report.format == "torch" and report.url == f"s3://{s3_bucket}/runs/7/ckpt.pt"
    assert {t.name: t.digest for t in report.tensors} == {n: hand_digest(t) for n, t in flat.items()}
    assert {t.name: (t.dtype, t.shape) for t in report.tensors}["model.head.weight"] == ("bfloat16", [4, 16])
    floats = [t for n, t in state["model"].items() if t.is_floating_point()]
    assert report.parameters == sum(t.numel() for t in floats) == 32 * 16 + 16 * 16 + 16 + 4 * 16
    assert report.dtypes == {"float32": 32 * 16 + 16 * 16 + 16, "bfloat16": 4 * 16}
    assert report.state.optimizer and report.state.dataloader == ["dataloader"] and report.state.rng == ["rng_state"]
    assert report.devices == ["cpu"] and "optimizer.param_groups.0.lr" in report.values

    # The same tensors as safetensors have the same digests: the digest is of the tensor, not the file.
    files.safetensors_file(tmp_path / "model.safetensors", state["model"])
    store.put_file("runs/7/model.safetensors", tmp_path / "model.safetensors")
    again = inspect_path(store, "runs/7/model.safetensors")
    assert {f"model.{t.name}": t.digest for t in again.tensors} == {
        t.name: t.digest for t in report.tensors if t.name.startswith("model.")
    }


class CountingStore:
    """The real store, with the bytes its reads returned counted."""

    def __init__(self, store) -> None:
        self.store, self.read = store, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def read_bytes(self, key, start=0, end=None):
        data = self.store.read_bytes(key, start, end)
        self.read += len(data)
        return data

    def open_read(self, key, start=0, end=None):
        return io.BytesIO(self.read_bytes(key, start, end))


def test_sharded_safetensors_in_gcs_read_by_header_then_streamed(tmp_path, gcs_bucket):
    torch.manual_seed(3)
    tensors = {f"layers.{i}.weight": torch.randn(512, 1024) for i in range(4)} | {"norm.weight": torch.ones(1024)}
    files.sharded_safetensors(tmp_path / "model", tensors, shards=2)
    store = open_store(f"gs://{gcs_bucket}")
    for path in (tmp_path / "model").iterdir():
        store.put_file(f"llm/{path.name}", path)

    headers_only = CountingStore(store)
    report = inspect_path(headers_only, "llm", digests=False)
    shard_bytes = sum(f.bytes for f in report.files if f.format == "safetensors")
    assert report.format == "safetensors" and report.tensors_total == 5 and shard_bytes > 8 << 20
    assert headers_only.read < 64 << 10  # two ranged reads a shard and the index, not the 8 MiB of tensors

    full = inspect_path(store, "llm/model.safetensors.index.json")
    assert {t.name: t.digest for t in full.tensors} == {n: hand_digest(t) for n, t in tensors.items()}
    assert {f.format for f in full.files} == {"index", "safetensors"} and full.parameters == 4 * 512 * 1024 + 1024
    assert {t.file for t in full.tensors} == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}

    index = json.loads((tmp_path / "model" / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["norm.weight"] == "model-00001-of-00002.safetensors"
    index["weight_map"]["norm.weight"] = "model-00002-of-00002.safetensors"  # the index lies
    store.put_bytes("llm/model.safetensors.index.json", json.dumps(index).encode())
    with pytest.raises(MalformedCheckpointError, match=r"norm\.weight"):
        inspect_path(store, "llm")


def test_dcp_saved_by_two_gloo_ranks_is_inspected_per_rank_and_resharded_to_one_and_back(dcp_dir, tmp_path):
    work = tmp_path / "store"
    shutil.copytree(dcp_dir, work / "step-42")
    store = open_store(work.as_uri())
    report = inspect_path(store, "step-42")

    assert report.format == "dcp" and report.world_size == 2
    assert {f.key for f in report.files} == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    assert [(r.rank, r.dataloader, r.rng) for r in report.ranks] == [
        (0, ["dataloader.rank_0"], ["rng.rank_0"]),
        (1, ["dataloader.rank_1"], ["rng.rank_1"]),
    ]
    assert report.state.optimizer and "step" in report.values
    assert report.parameters == (8 * 16 + 16) + (16 * 4 + 4) + (4 * 4 + 4)  # net.0, net.2, frozen

    # World size 2 -> 1: one process loads the whole state with DCP itself, no process group.
    import torch.distributed.checkpoint as dcp

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    target = {"model": {f"net.{k}": torch.zeros_like(v) for k, v in net.state_dict().items()}}
    dcp.load(target, checkpoint_id=str(work / "step-42"), no_dist=True)
    digests = report.digests()
    assert {f"model.{k}": hand_digest(v) for k, v in target["model"].items()} == {
        f"model.{k}": digests[f"model.{k}"] for k in target["model"]
    }

    # DCP -> one torch file -> DCP again, every tensor verified against the 2-rank inspection.
    single = convert(ConvertInput(store=StoreSpec(url=work.as_uri()), source_path="step-42", dest_path="single.pt",
                                  kind="dcp_to_torch", source=report), tmp_path / "a")  # fmt: skip
    (tmp_path / "b").mkdir()
    back = convert(ConvertInput(store=StoreSpec(url=work.as_uri()), source_path="single.pt", dest_path="step-42-1rank",
                                kind="torch_to_dcp", source=report), tmp_path / "b")  # fmt: skip
    assert single.verified == back.verified == report.tensors_total == 20
    loaded = torch.load(work / "single.pt", weights_only=True)
    assert (
        hand_digest(loaded["optim"]["state"]["net.0.weight"]["exp_avg"]) == digests["optim.state.net.0.weight.exp_avg"]
    )
    assert inspect_path(store, "step-42-1rank").digest_root == report.digest_root


def test_a_pickle_that_would_run_code_is_refused_everywhere(evil, tmp_path, gcs_bucket, capsys):
    marker, evil_file = evil["torch_marker"], evil["torch"]
    code, _, err = cli(["checkpoint", "inspect", str(evil_file)], capsys)
    assert code == 2 and str(evil_file) in err and "io.open" in err and "Nothing of it was executed" in err
    code, out, err = cli(["checkpoint", "compare", str(evil_file), str(evil_file), "--json"], capsys)
    assert code == 2 and str(evil_file) in out + err
    with pytest.raises(UnsafeCheckpointError):
        load_tensors(evil_file)
    with pytest.raises(UnsafeCheckpointError):  # what the endpoint loads its state dict with
        load_tensors_from_bytes(evil_file.read_bytes(), "ckpt.pt")

    # Synced by the delta engine (bytes, never unpickled), then judged on the target: refused there too.
    totals, _ = sync(evil_file.parent.as_uri(), f"gs://{gcs_bucket}/ckpt")
    assert totals.objects_changed == 1
    store = StoreSpec(url=f"gs://{gcs_bucket}/ckpt")
    with pytest.raises(ApplicationError, match=r"io\.open") as failure:
        ActivityEnvironment().run(inspect_checkpoint, InspectInput(store=store, path="ckpt.pt"))
    assert failure.value.non_retryable and failure.value.type == "UnsafeCheckpointError"
    with pytest.raises(ApplicationError, match=r"io\.open"):
        request = ConvertInput(
            store=store, source_path="ckpt.pt", dest_path="x.safetensors", kind="torch_to_safetensors"
        )
        ActivityEnvironment().run(convert_checkpoint, request)
    assert not marker.exists()


def test_unsafe_dcp_values_and_metadata_are_refused_before_torch_sees_them(evil, dcp_dir, tmp_path):
    marker = evil["dcp_marker"]
    with pytest.raises(UnsafeCheckpointError, match="sampler") as refused:
        inspect_path(open_store(evil["dcp"].as_uri()), "")
    assert "io.open" in str(refused.value)
    shutil.copytree(evil["dcp"], tmp_path / "evil-dcp")
    with pytest.raises(UnsafeCheckpointError):  # refused before torch's dcp_to_torch_save is called
        convert(ConvertInput(store=StoreSpec(url=tmp_path.as_uri()), source_path="evil-dcp", dest_path="out.pt",
                             kind="dcp_to_torch"), tmp_path / "scratch")  # fmt: skip
    assert not (tmp_path / "out.pt").exists()

    bad_metadata = tmp_path / "bad-metadata"
    shutil.copytree(dcp_dir, bad_metadata)
    (bad_metadata / ".metadata").write_bytes(pickle.dumps(files.OpensFile(marker), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata"):
        load_tensors(bad_metadata)
    assert not marker.exists()


def test_compare_names_one_changed_element_and_calls_a_bf16_copy_within_tolerance(tmp_path, capsys):
    state = files.model_state()
    a = files.save(tmp_path / "a.pt", state)
    edited = {k: v.clone() for k, v in state.items()}
    edited["layers.0.weight"][3, 5] += 0.5
    b = files.save(tmp_path / "b.pt", edited)

    code, out, _ = cli(["checkpoint", "compare", str(b), f"file://{a}", "--json"], capsys)
    result = json.loads(out)
    worst = result["tensors"][0]
    assert code == 1 and result["outcome"] == "different" and result["different"] == 1 and result["equal"] == 4
    assert worst["name"] == "layers.0.weight" and worst["differing_elements"] == 1
    assert worst["max_abs"] == pytest.approx(0.5, rel=1e-6)

    bf16 = files.safetensors_file(tmp_path / "bf16.safetensors", {k: v.to(torch.bfloat16) if v.is_floating_point()
                                                                  else v for k, v in state.items()})  # fmt: skip
    from_bytes = {name: load_tensors_from_bytes(p.read_bytes(), p.name) for name, p in (("a", a), ("bf16", bf16))}
    assert compare_tensors(from_bytes["a"], load_tensors(a)).outcome == "identical"
    assert compare_tensors(from_bytes["bf16"], load_tensors(bf16)).outcome == "identical"

    code, out, _ = cli(["checkpoint", "compare", str(bf16), str(a), "--json"], capsys)
    result = json.loads(out)
    changed = {t["name"]: t for t in result["tensors"] if t["dtype_changed"]}
    assert code == 0 and result["outcome"] == "within_tolerance"
    assert set(changed) == {"embed.weight", "layers.0.weight", "layers.0.bias"}  # head.weight was bf16 already
    assert all(t["status"] == "within_tolerance" and t["rtol"] == 1.6e-2 and 0 < t["max_rel"] <= 2**-8 for t in
               changed.values())  # fmt: skip

    code, out, _ = cli(["checkpoint", "compare", str(bf16), str(a), "--rtol", "0", "--atol", "0"], capsys)
    assert code == 0 and "within_tolerance" in out and "dtype bfloat16→float32" in out

    smaller = {k: v for k, v in state.items() if k != "steps"} | {"extra": torch.zeros(2)}
    smaller["embed.weight"] = smaller["embed.weight"][:8]
    diff = compare_tensors(smaller, state)
    assert (diff.only_in_a, diff.only_in_b, diff.shape_changed) == (1, 1, 1) and diff.tensors[0].name == "embed.weight"

    # NaNs in the same place and equal infinities are equal; an unmatched NaN or infinity always differs.
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([1.0, nan, inf, 2.0, 0.0, -inf, 5.0])
    y = torch.tensor([1.0, nan, inf, 2.5, 1e-9, inf, nan])
    (only,) = compare_tensors({"x": x}, {"x": y}).tensors
    assert only.status == "different" and only.differing_elements == 3  # 2 vs 2.5, -inf vs inf, 5 vs nan


def test_a_cuda_saved_checkpoint_needs_map_location_on_a_cpu_target_and_loads_with_it(tmp_path):
    path = files.cuda_saved(tmp_path / "gpu" / "model.pt", files.model_state())
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)  # what a user would hit on this host
    store = StoreSpec(url=(tmp_path / "gpu").as_uri())
    source = inspect_path(open_store(store), "model.pt")
    assert source.devices == ["cuda:0"] and {t.device for t in source.tensors} == {"cuda:0"}

    report = ActivityEnvironment().run(checkpoint_compatibility, CompatibilityInput(
        name="gpu-model", store=store, path="model.pt", source=source, environment="cpu-box"))  # fmt: skip
    checks = {c.metric: c for c in report.verdict.checks}
    assert report.map_location == "cpu" and any("map_location=cpu" in w for w in report.warnings)
    assert checks["load"].outcome == "pass" and "map_location=cpu" in checks["load"].detail
    assert report.verdict.outcome == "pass" and report.target_environment.torch_version == torch.__version__


def test_malformed_safetensors_are_refused_with_exit_2(tmp_path, capsys):
    data = torch.arange(4, dtype=torch.float32).numpy().tobytes()
    past_end = files.raw_safetensors(tmp_path / "past-end.safetensors",
                                     {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, data,
                                     declared_length=10_000)  # fmt: skip
    overlap = files.raw_safetensors(tmp_path / "overlap.safetensors", {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, data[:12])  # fmt: skip
    outside = files.raw_safetensors(tmp_path / "outside.safetensors",
                                    {"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}, data)  # fmt: skip
    for path, reason in [(past_end, "past the end"), (overlap, "overlap"), (outside, "outside")]:
        code, _, err = cli(["checkpoint", "inspect", str(path)], capsys)
        assert code == 2 and str(path) in err and reason in err, err
    code, out, err = cli(["checkpoint", "compare", str(overlap), str(outside), "--json"], capsys)
    assert code == 2 and "overlap" in out + err


def test_compatibility_blocks_what_would_fail_on_the_target(dcp_dir, tmp_path):
    work = tmp_path / "target"
    shutil.copytree(dcp_dir, work / "step-42")
    files.save(work / "bf16.pt", files.model_state())
    store = StoreSpec(url=work.as_uri())
    dcp_source = inspect_path(open_store(store), "step-42")

    def judge(path: str, source: CheckpointInspection, **facts):
        request = CompatibilityInput(name=path, store=store, path=path, source=source, **facts)
        return ActivityEnvironment().run(checkpoint_compatibility, request)

    wider = judge("step-42", dcp_source, target_gpu_type="H100-80GB", target_gpu_count=4)
    assert wider.verdict.outcome == "fail" and [b.split(":")[0] for b in wider.blockers] == ["resharding"]
    assert "dataloader.rank_0" in wider.blockers[0] and any("RNG state of 2 ranks" in w for w in wider.warnings)
    same = judge("step-42", dcp_source, target_gpu_type="H100-80GB", target_gpu_count=2)
    assert same.verdict.outcome == "pass" and any("frozen" in w for w in same.warnings)

    bf16_source = inspect_path(open_store(store), "bf16.pt")
    old_gpus = judge("bf16.pt", bf16_source, target_gpu_type="V100-16GB", target_gpu_count=8)
    assert old_gpus.verdict.outcome == "fail" and "bfloat16 needs compute capability >= 8.0" in old_gpus.blockers[0]

    files.save(work / "bf16.pt", {**files.model_state(), "steps": torch.tensor([8])})  # the copy changed
    changed = judge("bf16.pt", bf16_source)
    digests = {c.metric: c for c in changed.verdict.checks}["digests"]
    assert digests.outcome == "fail" and changed.mismatched == ["steps"]

    big = bf16_source.model_copy(update={"parameters": 70_000_000_000, "parameter_bytes": 140_000_000_000})
    check, fit, _ = memory_check(big, [], "H100-80GB", 2)
    assert check.outcome == "fail" and "quantize to 8-bit" in check.detail and fit.memory_gb == 160
    check, fit, warnings = memory_check(big, [], "H100-80GB", 4)
    assert check.outcome == "pass" and fit.fits_training is False and "reduce the batch size" in warnings[0]


def test_a_large_checkpoint_is_judged_by_its_digest_root_beyond_the_listed_tensors(tmp_path):
    from activities.checkpoints.compat import check_compatibility
    from activities.checkpoints.models import MAX_TENSORS_IN_RESULT

    state = {f"block.{i:04d}": torch.full((2,), float(i)) for i in range(MAX_TENSORS_IN_RESULT + 50)}
    files.save(tmp_path / "big.pt", state)
    store = StoreSpec(url=tmp_path.as_uri())
    source = inspect_path(open_store(store), "big.pt")
    assert source.tensors_truncated and len(source.tensors) == MAX_TENSORS_IN_RESULT
    assert source.tensors_total == MAX_TENSORS_IN_RESULT + 50 and len(source.model_dump_json()) < 256_000

    state[f"block.{MAX_TENSORS_IN_RESULT + 10:04d}"][0] = -1.0  # a tensor the result does not list by name
    files.save(tmp_path / "big.pt", state)
    report = check_compatibility(
        CompatibilityInput(name="big", store=store, path="big.pt", source=source), tmp_path / "x"
    )
    digests = {c.metric: c for c in report.verdict.checks}["digests"]
    assert digests.outcome == "fail" and "digest roots differ" in digests.detail


def test_convert_command_verifies_every_tensor_and_never_overwrites(dcp_dir, tmp_path, capsys, s3_bucket):
    """`skyshift checkpoint convert`: DCP (2 ranks) → one torch file → safetensors in S3, each output's tensors equal
    to the source's digests; a destination that exists is refused with exit 2 and left as it was."""
    work = tmp_path / "ckpt"
    shutil.copytree(dcp_dir, work / "step-42")
    source = inspect_path(open_store(work.as_uri()), "step-42")

    code, out, err = cli(["checkpoint", "convert", str(work / "step-42"), str(work / "single.pt"), "--to", "torch",
                          "--json"], capsys)  # fmt: skip
    assert code == 0, err
    single = json.loads(out)
    assert single["verified"] == single["tensors"] == source.tensors_total
    assert inspect_path(open_store(work.as_uri()), "single.pt").digest_root == source.digest_root

    code, out, err = cli(["checkpoint", "convert", f"file://{work}/single.pt", f"s3://{s3_bucket}/hf/model.safetensors",
                          "--to", "safetensors", "--json"], capsys)  # fmt: skip
    assert code == 0, err
    converted = inspect_path(open_store(f"s3://{s3_bucket}"), "hf/model.safetensors")
    assert converted.format == "safetensors" and converted.digests() == source.digests()
    assert "step" in json.loads(out)["dropped"]  # a non-tensor value safetensors cannot hold, named

    before = (work / "single.pt").read_bytes()
    code, _, err = cli(["checkpoint", "convert", str(work / "step-42"), str(work / "single.pt"), "--to", "torch"],
                       capsys)  # fmt: skip
    assert code == 2 and "single.pt" in err and "exists" in err
    assert (work / "single.pt").read_bytes() == before
    code, _, err = cli(["checkpoint", "convert", str(work / "single.pt"), str(work / "again.pt"), "--to", "torch"],
                       capsys)  # fmt: skip
    assert code == 2 and "needs a DCP checkpoint" in err and not (work / "again.pt").exists()
