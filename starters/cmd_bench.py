"""`skyshift bench`: the whole micro-suite on this machine, as a table (rich on a terminal, plain text otherwise).

An operator runs it alone on a new node before any migration: every figure with its spread, the
share of the device's datasheet peak it reaches, what NVML saw meanwhile, the interconnect, and
the environment fingerprint. `--json` prints the activity's own `BenchResult`, nothing else.

Also runnable as `python -m starters.cmd_bench` (what bench/gpu_suite.sh does on a GPU machine
that has torch but not the whole CLI's dependencies).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pydantic import ValidationError

from starters.common import EXIT_INVALID, EXIT_OK, UsageError, emit, fail

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from activities.microsuite import BenchInput, BenchResult, CompatibilityMatrix, EnvironmentFingerprint, Measurement


def add_commands(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="run the GPU/CPU micro-suite here and print every figure with its spread")
    bench.set_defaults(handler=cmd_bench)
    bench.add_argument("--json", action="store_true", help="print one JSON object (the BenchResult) on stdout")
    bench.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="where to measure: auto takes CUDA when present (default auto)")  # fmt: skip
    bench.add_argument("--trials", type=int, default=3, help="repeats of every test (median and min-max reported)")
    bench.add_argument("--size", type=int, help="matmul size (default 8192 on CUDA, 1024 on CPU)")
    bench.add_argument("--seconds", type=float, default=0.5, help="timed seconds of each test within a trial")
    bench.add_argument("--sustained", type=float, help="seconds of the sustained run (default 60 on CUDA, 2 on CPU)")
    bench.add_argument(
        "--allreduce-processes", type=int, help="all-reduce ranks (default: every GPU when there are several)"
    )
    bench.add_argument("--quick", action="store_true", help="small sizes and short runs: a smoke test in seconds")
    bench.add_argument("--telemetry-url", help="store URL the NVML series is written under (file://, s3://, gs://)")


def _request(args: argparse.Namespace) -> BenchInput:
    from activities.microsuite import BenchInput

    size = args.size
    if size is None and not args.quick:
        import torch

        size = 8192 if args.device != "cpu" and torch.cuda.is_available() else 1024
    fields = {
        "environment": "local",
        "trials": args.trials,
        "matrix_size": size,
        "device": args.device,
        "seconds_per_test": args.seconds,
        "sustained_seconds": args.sustained,
        "allreduce_processes": args.allreduce_processes,
        "telemetry_url": args.telemetry_url,
    }
    if args.quick:
        fields |= {"matrix_size": args.size or 256, "seconds_per_test": min(args.seconds, 0.1), "device_copy_mib": 16,
                   "copy_mib": 16, "inference_batch": 4, "inference_seq": 16, "inference_width": 64, "train_batch": 32,
                   "sustained_seconds": 1.0 if args.sustained is None else args.sustained}  # fmt: skip
    try:
        return BenchInput(**fields)
    except ValidationError as error:
        flags = {"matrix_size": "--size", "seconds_per_test": "--seconds", "sustained_seconds": "--sustained",
                 "allreduce_processes": "--allreduce-processes", "telemetry_url": "--telemetry-url"}  # fmt: skip
        problems = []
        for e in error.errors():
            field = str(e["loc"][0]) if e["loc"] else ""
            problems.append(f"{flags.get(field, '--' + field)}: {e['msg']}")
        raise UsageError("; ".join(problems)) from None


def cmd_bench(args: argparse.Namespace) -> int:
    from activities.microsuite import run_benchmark

    request = _request(args)

    def progress(step) -> None:
        if not args.json and step.test != "done" and step.done < step.total:
            print(f"  {step.test} ({step.done + 1}/{step.total})", file=sys.stderr, flush=True)

    shown: set[tuple[str, int]] = set()

    def once(step) -> None:  # long tests report many times; show each test once
        if (step.test, step.done) not in shown:
            shown.add((step.test, step.done))
            progress(step)

    try:
        result = run_benchmark(request, progress=once)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.json:
        emit(args, result.model_dump(mode="json"), "")
    else:
        render(result)
    return EXIT_OK


# -- rendering -----------------------------------------------------------------------------------


def _console() -> Console:
    from rich.console import Console

    terminal = sys.stdout.isatty()
    # Not a terminal: plain text, no colour, wide enough that rows never wrap (grep and diff stay useful).
    return Console(file=sys.stdout, width=None if terminal else 220, no_color=not terminal, highlight=False,
                   force_terminal=terminal, emoji=False)  # fmt: skip


def _table(columns: str, terminal: bool) -> Table:
    """`columns`: 'name' is left-aligned, '>name' right-aligned (numbers). Titles are printed above, unwrapped."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAVY if terminal else None, show_edge=terminal)
    for column in columns.split("|"):
        table.add_column(column.removeprefix(">"), justify="right" if column.startswith(">") else "left")
    return table


#: Parameters the table leaves out: shown elsewhere (sustained line, all-reduce table) or only for machines.
_HIDDEN_PARAMS = ("samples_per_trial", "algbw_gbps", "drop_pct", "size_bytes", "percentile")


def _number(value: float) -> str:
    return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"


def telemetry_text(m: Measurement) -> str:
    """One line of what the GPU did during the test: clocks, power, temperature, throttling, ECC."""
    parts = []
    for t in m.telemetry:
        bits = [f"gpu{t.gpu}"]
        if t.sm_clock_mhz:
            bits.append(f"SM {t.sm_clock_mhz.median:.0f} MHz")
        if t.power_w:
            bits.append(f"{t.power_w.max:.0f} W")
        if t.temperature_c:
            bits.append(f"{t.temperature_c.max:.0f} C")
        if t.utilization_pct:
            bits.append(f"util {t.utilization_pct.median:.0f}%")
        slow = [r for r in t.clock_event_reasons if r not in ("gpu_idle", "applications_clocks_setting")]
        if slow:
            bits.append(f"throttle {','.join(slow)} ({t.throttled_fraction:.0%})")
        if t.ecc_uncorrected_delta:
            bits.append(f"ECC uncorrected +{t.ecc_uncorrected_delta}")
        parts.append(" ".join(bits))
    return "; ".join(parts)


def suite_table(result: BenchResult, terminal: bool = False) -> Table:
    from activities.microsuite import ceiling_of

    suite = result.suite
    assert suite is not None
    table = _table("test|dtype / params|>median|>min|>max|unit|>of peak|during the test", terminal)
    for m in suite.measurements:
        params = ", ".join(f"{k}={v}" for k, v in m.params.items() if k not in _HIDDEN_PARAMS)
        ceiling = ceiling_of(suite.device_name, m)
        table.add_row(
            m.name,
            " ".join(p for p in (m.dtype or "", params) if p),
            _number(m.median),
            _number(m.min),
            _number(m.max),
            m.unit,
            f"{ceiling.fraction:.0%} of {ceiling.ceiling:g}" if ceiling else "",
            telemetry_text(m),
        )
    return table


def fingerprint_rows(fp: EnvironmentFingerprint) -> list[tuple[str, str]]:
    gpus = ", ".join(f"{g.name} {g.memory_mib // 1024} GiB cc{g.compute_capability}" for g in fp.gpus) or "none"
    return [
        ("GPUs", f"{len(fp.gpus)}: {gpus}"),
        ("driver", f"{fp.driver or '-'} (CUDA {fp.cuda_driver or '-'})"),
        ("torch", f"{fp.torch} (CUDA {fp.cuda_runtime or '-'}, cuDNN {fp.cudnn or '-'}, NCCL {fp.nccl or '-'})"),
        ("bf16 / fp8", f"{'yes' if fp.bf16 else 'no'} / {'yes' if fp.fp8 else 'no'}"),
        ("Python", fp.python),
        ("OS", f"{fp.os}, kernel {fp.kernel}"),
        ("CPU", f"{fp.cpu_model}, {fp.cpu_count} cores"),
        *(("note", note) for note in fp.notes),
    ]


def matrix_lines(matrix: CompatibilityMatrix) -> list[str]:
    """Plain lines for summaries (`status`, the demo): every row, flagged ones marked with their status."""
    width = max(len(r.item) for r in matrix.rows)
    lines = [f"{'':{width}}  {matrix.source_environment}  |  {matrix.target_environment}"]
    for r in matrix.rows:
        mark = {"warn": "  ! warn: ", "fail": "  ! FAIL: "}.get(r.status, "")
        lines.append(f"{r.item:{width}}  {r.source}  |  {r.target}{mark}{r.detail if mark else ''}")
    return lines


def render(result: BenchResult, console: Console | None = None) -> None:
    console = console or _console()
    terminal = console.is_terminal
    suite = result.suite
    if suite is None:  # a result recorded before the suite existed
        console.print(f"{result.device} ({result.device_name}): matmul {result.median_matmul_tflops:.4g} TFLOP/s, "
                      f"training {result.median_train_samples_per_s:,.0f} samples/s")  # fmt: skip
        return
    console.print(f"{suite.device} ({suite.device_name}): {suite.trials} trials x {suite.seconds_per_test:g} s "
                  f"per test, seed {suite.seed}")  # fmt: skip
    console.print(suite_table(result, terminal))
    if suite.sustained:
        s = suite.sustained
        console.print(f"sustained {s.dtype} {s.matrix_size}: burst {s.burst:.4g} -> sustained {s.sustained:.4g} "
                      f"TFLOP/s over {s.seconds:g} s ({s.drop_pct:.1f}% drop, {len(s.windows)} windows)")  # fmt: skip
    if suite.allreduce:
        a = suite.allreduce
        console.print(f"all-reduce, {a.world_size} ranks, {a.backend}, {a.iterations} iterations ({a.warmup} warm-up)")
        table = _table(">bytes|>time us|>algbw GB/s|>busbw GB/s|correct", terminal)
        for p in a.points:
            table.add_row(f"{p.size_bytes:,}", _number(p.time_us.median), _number(p.algbw_gbps.median),
                          _number(p.busbw_gbps.median), "yes" if p.correct else "NO")  # fmt: skip
        console.print(table)
    if suite.topology:
        t = suite.topology
        console.print(f"topology: {t.detail}; islands {t.islands}")
        for gpu, row in zip(t.gpus, t.links, strict=True):
            console.print(f"  {gpu}: {' '.join(f'{link:>4}' for link in row)}")
    for skip in suite.skipped:
        console.print(f"skipped {skip.name}: {skip.reason}")
    console.print(f"telemetry: {suite.telemetry_note}"
                  + (f"; series at {suite.telemetry_series_url}" if suite.telemetry_series_url else ""))  # fmt: skip
    if result.fingerprint:
        for key, value in fingerprint_rows(result.fingerprint):
            console.print(f"{key:>10}: {value}")


def main(argv: list[str] | None = None) -> int:
    """`skyshift bench` without the rest of the CLI (bench/gpu_suite.sh runs this on GPU machines)."""
    parser = argparse.ArgumentParser(prog="skyshift")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.handler(args)
    except UsageError as error:
        return fail(args, EXIT_INVALID, str(error))


if __name__ == "__main__":
    sys.exit(main())
