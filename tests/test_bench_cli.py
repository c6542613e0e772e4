"""`skyshift bench` as an operator runs it on a fresh node: one JSON object, or a plain table when piped."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from starters import cmd_bench
from starters.common import UsageError

QUICK = ["--quick", "--trials", "2", "--size", "64", "--seconds", "0.05", "--sustained", "0.3"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="skyshift")
    cmd_bench.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


def test_json_is_exactly_one_object_with_the_whole_suite(capsys):
    args = parse(["--device", "cpu", *QUICK, "--json"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    result = json.loads(out)
    assert result["device"] == "cpu" and result["median_train_samples_per_s"] > 0
    names = {m["name"] for m in result["suite"]["measurements"]}
    assert {"matmul_fp32_64", "device_copy", "latency_b1_p99", "latency_b4_p99", "train_mlp"} <= names
    assert result["fingerprint"]["torch"] == torch.__version__


def test_piped_output_is_a_plain_table_with_spread(capsys, cpu_bf16: bool):
    assert cmd_bench.main(["--device", "cpu", *QUICK]) == 0
    captured = capsys.readouterr()
    assert "\x1b[" not in captured.out  # not a terminal: no colours, no box drawing
    rows = {line.split()[0]: line.split() for line in captured.out.splitlines() if line.strip()}
    assert rows["test"][:6] == ["test", "dtype", "/", "params", "median", "min"]
    matmul = rows["matmul_fp32_64"]
    unit = matmul.index("TFLOP/s")
    median, low, high = (float(x.replace(",", "")) for x in matmul[unit - 3 : unit])
    assert 0 < low <= median <= high
    assert "skipped h2d: no CUDA device" in captured.out or torch.cuda.is_available()
    # The sustained test holds the best native dtype: bf16 where the CPU has bf16 units, else fp32.
    best = "bf16" if cpu_bf16 and not torch.cuda.is_available() else "fp32"
    assert f"sustained {best} 64: burst" in captured.out
    assert ("matmul_bf16_64" in rows) == cpu_bf16 or torch.cuda.is_available()
    assert "matmul_fp32_64 (1/" in captured.err  # progress goes to stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_exits_2(capsys):
    assert cmd_bench.main(["--device", "cuda"]) == 2
    assert "cuda was requested" in capsys.readouterr().err
    assert cmd_bench.main(["--device", "cuda", "--json"]) == 2  # a script parsing stdout gets the error there
    assert json.loads(capsys.readouterr().out) == {
        "error": "device: cuda was requested but torch.cuda.is_available() is False on this worker",
        "exit_code": 2,
    }


def test_invalid_input_names_the_flag():
    with pytest.raises(UsageError, match="--trials: Input should be greater than or equal to 1"):
        cmd_bench.cmd_bench(parse(["--trials", "0", "--json"]))
    with pytest.raises(UsageError, match="--seconds"):
        cmd_bench.cmd_bench(parse(["--device", "cpu", "--seconds", "0", "--json"]))
