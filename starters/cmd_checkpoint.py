"""`skyshift checkpoint inspect | compare | convert | decrypt | keygen`: checkpoints read safely, compared tensor by
tensor, converted with every tensor verified, opened from a sealed repository, and local key files for the
embedded stack.

Runs in this process against the stores directly (no Temporal): inspection streams from file://, s3:// and
gs:// with ranged reads; compare copies remote checkpoints to a temporary directory and memory-maps them.
Exit codes: 0 ok (identical or within tolerance for compare), 1 different / failed, 2 invalid input
(a file that would run code, a malformed file, a bad URL: the message names it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from starters.common import EXIT_FAILED, EXIT_OK, UsageError, emit


def _report_failure(args: argparse.Namespace, message: str, code: int = EXIT_FAILED) -> int:
    """A failure that is not invalid input: one JSON object with `--json`, else a line on stderr."""
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "exit_code": code}))
    else:
        print(f"skyshift: {message}", file=sys.stderr)
    return code


def _location(what: str, url: str):
    from activities.checkpoints.fetch import split_url

    try:
        return split_url(url)
    except ValidationError as error:
        raise UsageError(f"{what} {url!r}: {error.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def cmd_inspect(args: argparse.Namespace) -> int:
    from activities.checkpoints.errors import CheckpointError
    from activities.checkpoints.inspect import inspect_path, inspection_text
    from activities.stores import StoreError, open_store

    spec, path = _location("URL", args.url)
    try:
        report = inspect_path(open_store(spec), path, digests=not args.no_digests)
    except CheckpointError as error:
        raise UsageError(str(error)) from None
    except StoreError as error:
        return _report_failure(args, str(error))
    emit(args, report.model_dump(mode="json"), inspection_text(report, args.limit))
    return EXIT_OK


def _load(what: str, url: str, scratch: Path) -> dict[str, Any]:
    from activities.checkpoints.compare import load_tensors
    from activities.checkpoints.fetch import fetch_checkpoint
    from activities.stores import open_store

    spec, path = _location(what, url)
    if spec.url.startswith("file://"):
        from activities.checkpoints.links import refuse_links_out

        local = Path(spec.url.removeprefix("file://")) / path
        base = local if local.is_dir() else local.parent
        refuse_links_out(base, url, None if local.is_dir() else [local.name])  # never read past the root
    else:
        local = fetch_checkpoint(open_store(spec), path, scratch / what)
    return load_tensors(local)


def comparison_text(result, url_a: str, url_b: str, limit: int) -> str:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3g}"

    lines = [
        f"{url_a} vs {url_b}: {result.outcome} (rtol {result.rtol:g}, atol {result.atol:g})",
        f"  {result.equal} bitwise equal, {result.within_tolerance} within tolerance, {result.different} different, "
        f"{result.only_in_a} only in A, {result.only_in_b} only in B, {result.shape_changed} shape changed",
    ]
    shown = [t for t in result.tensors if t.status != "equal"][:limit]
    width = max((len(t.name) for t in shown), default=4)
    for t in shown:
        change = ""
        if t.dtype_changed:
            change += f" dtype {t.dtype_a}→{t.dtype_b}"
        if t.status == "shape_changed":
            change += f" shape {t.shape_a}→{t.shape_b}"
        counts = (
            f"{t.differing_elements:,}/{t.numel:,} elements" if t.status in ("different", "within_tolerance") else ""
        )
        lines.append(f"  {t.name:<{width}}  {t.status:<16} max_abs {number(t.max_abs):<9} "
                     f"max_rel {number(t.max_rel):<9} {counts}{change}")  # fmt: skip
    hidden = sum(t.status != "equal" for t in result.tensors) - len(shown)
    if hidden > 0:
        lines.append(f"  ... {hidden} more (--json lists them)")
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> int:
    from activities.checkpoints.compare import compare_tensors
    from activities.checkpoints.errors import CheckpointError
    from activities.stores import StoreError

    if args.rtol < 0 or args.atol < 0:
        raise UsageError(f"--rtol {args.rtol} / --atol {args.atol}: tolerances must be >= 0")
    with tempfile.TemporaryDirectory(prefix="skyshift-compare-") as scratch:
        try:
            a = _load("URL_A", args.url_a, Path(scratch))
            b = _load("URL_B", args.url_b, Path(scratch))
        except CheckpointError as error:
            raise UsageError(str(error)) from None
        except StoreError as error:
            return _report_failure(args, str(error))
        result = compare_tensors(a, b, rtol=args.rtol, atol=args.atol)
        del a, b  # memory maps of the scratch copies close before the directory goes
    payload = {"a": args.url_a, "b": args.url_b, **result.model_dump(mode="json")}
    emit(args, payload, comparison_text(result, args.url_a, args.url_b, args.limit))
    return EXIT_FAILED if result.outcome == "different" else EXIT_OK


CONVERSIONS = {"torch": "dcp_to_torch", "dcp": "torch_to_dcp", "safetensors": "torch_to_safetensors"}


def _destination(url: str):
    """(store, path) where a conversion writes: a local destination's store is its parent directory (the
    destination does not exist yet, so it cannot be told apart as a file or a directory)."""
    from activities.stores import StoreSpec

    if "://" not in url or url.startswith("file://"):
        path = Path(url.removeprefix("file://")).resolve()
        return StoreSpec(url=f"file://{path.parent}"), path.name
    return _location("DEST_URL", url)


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert where this command runs (run it on the target's machine: data read in-region); every tensor
    of the output is checked against the source's digests before anything is written, and an existing
    destination is never overwritten."""
    from activities.checkpoints.errors import CheckpointError
    from activities.checkpoints.reshard import ConversionMismatch, ConvertInput, convert
    from activities.stores import StoreError, open_store

    spec, path = _location("URL", args.url)
    destination, dest_path = _destination(args.dest_url)
    if not dest_path:
        raise UsageError(f"DEST_URL {args.dest_url!r}: name a file or directory inside the bucket or directory")
    try:
        target = open_store(destination)
        if target.info(dest_path) is not None or next(iter(target.list(f"{dest_path}/")), None) is not None:
            raise UsageError(f"DEST_URL {args.dest_url!r}: exists; choose a new path (nothing is ever overwritten)")
        request = ConvertInput(store=spec, source_path=path, destination=destination, dest_path=dest_path,
                               kind=CONVERSIONS[args.to])  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="skyshift-convert-") as scratch:
            result = convert(request, Path(scratch))
    except ConversionMismatch as error:
        return _report_failure(args, f"not written: {error}")
    except CheckpointError as error:
        raise UsageError(str(error)) from None
    except StoreError as error:
        return _report_failure(args, str(error))
    dropped = f"; not representable in {args.to}, left out: {', '.join(result.dropped)}" if result.dropped else ""
    text = (f"{result.source_url} → {result.dest_url}: {result.tensors} tensors, {result.verified} verified against "
            f"the source's digests, {result.bytes_written / 1e6:,.1f} MB written{dropped}")  # fmt: skip
    emit(args, result.model_dump(mode="json"), text)
    return EXIT_OK


def cmd_decrypt(args: argparse.Namespace) -> int:
    from activities.checkpoints.kms import KeyRef, KmsError
    from activities.checkpoints.sealed import OpenSealedInput, SealedError, TamperedError, open_repository
    from activities.stores import StoreError

    spec, path = _location("SEALED_URL", args.sealed_url)
    destination, destination_path = _location("DEST_URL", args.dest_url)
    if spec.url.startswith("file://") and path:  # a local directory given as a file: the repository is beside it
        raise UsageError(f"SEALED_URL {args.sealed_url!r}: name the directory that holds sealed/, not a file")
    kms_key = args.kms_key
    if kms_key and "://" not in kms_key and Path(kms_key).is_file():
        kms_key = Path(kms_key).resolve().as_uri()  # a local key file given as a path
    try:
        key = KeyRef(kms_key=kms_key) if kms_key else None
    except ValidationError as error:
        raise UsageError(f"--kms-key: {error.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    request = OpenSealedInput(store=spec, sealed_path=path, destination=destination,
                              destination_path=destination_path, key=key)  # fmt: skip
    try:
        result = open_repository(request)
    except TamperedError as error:
        return _report_failure(args, f"refused: {error}")
    except (SealedError, KmsError) as error:
        if isinstance(error, KmsError) and not error.permanent:
            return _report_failure(args, str(error))
        raise UsageError(str(error)) from None
    except StoreError as error:
        return _report_failure(args, str(error))
    text = (f"{result.files} file(s), {result.bytes_written / 1e6:,.1f} MB decrypted into {result.destination}; "
            f"{result.chunks_verified} chunks authenticated before decryption")  # fmt: skip
    emit(args, result.model_dump(mode="json"), text)
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from activities.checkpoints.kms import create_key_file

    try:
        ref = create_key_file(Path(args.file))
    except FileExistsError:
        raise UsageError(
            f"{args.file}: exists; a key file is never overwritten (data sealed under it would be lost)"
        ) from None
    emit(args, {"kms_key": ref.kms_key}, f"created key file {args.file}: use `kms_key: {ref.kms_key}` in the plan")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    checkpoint = sub.add_parser("checkpoint", help="inspect and compare checkpoints safely; open sealed checkpoints")
    commands = checkpoint.add_subparsers(dest="checkpoint_command", required=True, metavar="COMMAND")

    inspect = commands.add_parser("inspect", help="format, tensors with BLAKE3 digests, training state, ranks")
    inspect.set_defaults(handler=cmd_inspect)
    inspect.add_argument("url", help="file:///path, s3://bucket/key, gs://bucket/key or a local path")
    inspect.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    inspect.add_argument("--no-digests", action="store_true", help="read headers only (no tensor bytes)")
    inspect.add_argument("--limit", type=int, default=20, help="tensors listed in the text output")

    compare = commands.add_parser("compare", help="tensor by tensor: only-in-one-side, dtype/shape changes, values")
    compare.set_defaults(handler=cmd_compare)
    compare.add_argument("url_a", metavar="URL_A", help="the reference checkpoint (file://, s3://, gs://)")
    compare.add_argument("url_b", metavar="URL_B", help="the reference: relative differences are |a-b|/|b|")
    compare.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default 1e-5)")
    compare.add_argument("--atol", type=float, default=1e-8, help="absolute tolerance (default 1e-8)")
    compare.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    compare.add_argument("--limit", type=int, default=20, help="tensors listed in the text output")

    convert = commands.add_parser(
        "convert", help="DCP → one torch file, torch → DCP or safetensors; every tensor verified before writing"
    )
    convert.set_defaults(handler=cmd_convert)
    convert.add_argument("url", metavar="URL", help="a torch file or a DCP directory (file://, s3://, gs://)")
    convert.add_argument("dest_url", metavar="DEST_URL", help="where the converted checkpoint goes (must not exist)")
    convert.add_argument("--to", required=True, choices=sorted(CONVERSIONS),
                         help="torch: DCP → one file (any world size); dcp: one torch file → DCP; safetensors: torch → "
                              "safetensors (non-tensor entries are listed as left out)")  # fmt: skip
    convert.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    decrypt = commands.add_parser(
        "decrypt", help="verify and decrypt a sealed checkpoint (keys from KMS or a key file)"
    )
    decrypt.set_defaults(handler=cmd_decrypt)
    decrypt.add_argument("sealed_url", metavar="SEALED_URL", help="the checkpoint's target path, holding sealed/")
    decrypt.add_argument("dest_url", metavar="DEST_URL", help="where the plaintext files go")
    decrypt.add_argument("--kms-key", help="key id to use (default: the one the repository records)")
    decrypt.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    keygen = commands.add_parser("keygen", help="create a local key file for sealed checkpoints (embedded stack)")
    keygen.set_defaults(handler=cmd_keygen)
    keygen.add_argument("file", metavar="FILE", help="where to write the new key (mode 0600; never overwritten)")
    keygen.add_argument("--json", action="store_true", help="print one JSON object on stdout")
