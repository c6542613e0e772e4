"""`skyshift`: start, watch, approve and roll back migrations; run the embedded stack and demo.

Exit codes: 0 success, 2 invalid input (the message names the field or file), 1 failure.
`--json` prints exactly one JSON object on stdout and nothing else.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable

from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from skyshift.runtime import load_stack_env
from starters.common import EXIT_FAILED, EXIT_INVALID, EXIT_OK, UsageError, emit, with_client
from workflows.plan import PlanError


def rejected(what: str, error: WorkflowUpdateFailedError) -> UsageError:
    """An update the workflow's validator refused: invalid input, with the validator's reason."""
    return UsageError(f"{what}: rejected: {getattr(error.cause, 'message', None) or error}")


def ui_link(workflow_id: str) -> str:
    base = os.environ.get("TEMPORAL_UI", "http://127.0.0.1:8233")
    namespace = os.environ.get("TEMPORAL_NAMESPACE", "default")
    return f"{base}/namespaces/{namespace}/workflows/{workflow_id}"


# -- commands -----------------------------------------------------------------------------------


def cmd_plan_validate(args: argparse.Namespace) -> int:
    from starters.plans import load_plan

    plan = load_plan(args.plan)
    emit(
        args,
        {"valid": True, "plan": plan.model_dump(mode="json")},
        f"{args.plan}: valid plan '{plan.name}' ({plan.source} → {plan.target}, "
        f"{len(plan.cutover.stages)} cutover stages)",
    )
    return EXIT_OK


def cmd_plan_schema(args: argparse.Namespace) -> int:
    from starters.plans import plan_schema

    print(json.dumps(plan_schema(), indent=None if args.json else 2))
    return EXIT_OK


def cmd_start(args: argparse.Namespace) -> int:
    from starters.plans import load_plan

    plan = load_plan(args.plan)  # validated before any connection: an invalid plan starts nothing

    async def go(args: argparse.Namespace, client: Client) -> int:
        from starters import operate, render

        handle = await operate.start_migration(client, plan, args.id)
        if not args.wait:
            emit(
                args,
                {"id": handle.id, "run_id": handle.result_run_id, "ui": ui_link(handle.id)},
                f"started {handle.id}\n  watch: skyshift watch {handle.id}\n  UI:    {ui_link(handle.id)}",
            )
            return EXIT_OK
        state = await handle.result()
        emit(args, state.model_dump(mode="json"), render.summary(state, ui_link(handle.id)))
        return EXIT_OK if state.outcome == "completed" else EXIT_FAILED

    return with_client(go)(args)


@with_client
async def cmd_status(args: argparse.Namespace, client: Client) -> int:
    from starters import operate, render

    state = await operate.get_status(client, args.id)
    emit(args, state.model_dump(mode="json"), render.summary(state, ui_link(args.id)))
    return EXIT_OK


@with_client
async def cmd_list(args: argparse.Namespace, client: Client) -> int:
    from starters import operate

    rows = await operate.list_migrations(client)
    text = "\n".join(
        f"{r['id']:<40} {r['status']:<11} {r['phase'] or '-':<14} "
        f"{r['traffic_percent'] or 0:>3}%  {r['verdict'] or '-'}"
        for r in rows
    )
    emit(args, {"migrations": rows}, text or "no migrations")
    return EXIT_OK


@with_client
async def cmd_watch(args: argparse.Namespace, client: Client) -> int:
    from starters import operate, render

    def show(state, previous) -> None:
        for line in render.changes(state, previous):
            print(line, flush=True)

    state = await operate.follow(client, args.id, show)
    print(render.summary(state, ui_link(args.id)))
    return EXIT_OK if state.outcome == "completed" else EXIT_FAILED


@with_client
async def cmd_approve(args: argparse.Namespace, client: Client) -> int:
    from starters import operate

    try:
        stage = await operate.approve(client, args.id, args.stage, args.by, args.note)
    except WorkflowUpdateFailedError as error:
        raise rejected(f"approve --stage {args.stage}", error) from None
    emit(args, {"id": args.id, "approved": stage, "by": args.by}, f"approved {stage} on {args.id}")
    return EXIT_OK


@with_client
async def cmd_rollback(args: argparse.Namespace, client: Client) -> int:
    from starters import operate

    await operate.rollback(client, args.id, args.reason, args.by)
    emit(
        args,
        {"id": args.id, "rollback_requested": True, "by": args.by},
        f"rollback requested on {args.id}; follow it with: skyshift watch {args.id}",
    )
    return EXIT_OK


def _pause_command(resume: bool) -> Callable[[argparse.Namespace], int]:
    @with_client
    async def command(args: argparse.Namespace, client: Client) -> int:
        from starters import operate

        await operate.pause(client, args.id, args.by, args.note, resume=resume)
        verb = "resumed" if resume else "paused"
        emit(args, {"id": args.id, verb: True}, f"{verb} {args.id}")
        return EXIT_OK

    return command


def _stage_command(action: str) -> Callable[[argparse.Namespace], int]:
    @with_client
    async def command(args: argparse.Namespace, client: Client) -> int:
        from starters import operate

        try:
            stage = await operate.stage_action(client, args.id, action, args.by, args.note)
        except WorkflowUpdateFailedError as error:
            raise rejected(action.replace("_", "-"), error) from None
        emit(args, {"id": args.id, action: stage, "by": args.by}, f"{action.replace('_', ' ')}: {stage} on {args.id}")
        return EXIT_OK

    return command


def cmd_bench(args: argparse.Namespace) -> int:
    from activities.bench import BenchInput, run_benchmark

    try:
        request = BenchInput(trials=args.trials, matrix_size=args.size, device=args.device)
        result = run_benchmark(
            request, progress=lambda n: None if args.json else print(f"trial {n}/{args.trials} done", file=sys.stderr)
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    emit(
        args,
        result.model_dump(mode="json"),
        f"{result.device} ({result.device_name}, {result.dtype}, torch {result.torch_version}):\n"
        f"  matmul {args.size}x{args.size}: {result.median_matmul_tflops:.4f} TFLOP/s "
        f"(median of {len(result.trials)})\n"
        f"  MLP training: {result.median_train_samples_per_s:,.0f} samples/s\n"
        f"  telemetry: {result.telemetry.model_dump() if result.telemetry else result.telemetry_note}",
    )
    return EXIT_OK


def cmd_dev(args: argparse.Namespace) -> int:
    from starters import devstack

    if args.action == "up":
        _, started = devstack.up()
        info = devstack.status()
        if args.json:
            print(json.dumps({**info, "started": started}))
        else:
            print("started the embedded stack" if started else "the embedded stack is already running")
            devstack.print_status(info)
        return EXIT_OK
    if args.action == "down":
        stopped = devstack.down()
        emit(args, {"stopped": stopped}, f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        return EXIT_OK
    info = devstack.status()
    if args.json:
        print(json.dumps(info))
    else:
        devstack.print_status(info)
    return EXIT_OK if info["running"] else EXIT_FAILED


def cmd_worker(args: argparse.Namespace) -> int:
    # Workers are their own process kind; hand over to their entry point.
    argv = [sys.executable, "-m", "workers.main", *(["--control"] if args.control else ["--env", args.env])]
    os.execv(sys.executable, argv)
    return EXIT_FAILED  # not reached


def cmd_demo(args: argparse.Namespace) -> int:
    from starters.demo import run_demo

    return run_demo(args.scenario, json_output=args.json)


# -- parser -------------------------------------------------------------------------------------

#: Modules that add their own subcommands: each has `add_commands(subparsers)`, sets `handler` on
#: its parsers and imports heavy libraries (torch) only inside its handlers.
COMMAND_MODULES: tuple[str, ...] = ("starters.sync",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skyshift", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help: str, json_flag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(handler=handler)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        return p

    dev = command("dev", cmd_dev, "embedded stack on 127.0.0.1 (Temporal, S3, GCS), state under .skyshift/")
    dev.add_argument("action", choices=["up", "down", "status"])

    worker = command("worker", cmd_worker, "run a worker for one task queue", json_flag=False)
    which = worker.add_mutually_exclusive_group(required=True)
    which.add_argument("--env", help="serve skyshift.<ENV>")
    which.add_argument("--control", action="store_true", help="serve skyshift.control")

    demo = command("demo", cmd_demo, "a full migration on the embedded stack, end to end")
    demo.add_argument("--scenario", choices=["ok", "regression"], default="ok")

    plan = sub.add_parser("plan", help="validate a plan or print its JSON Schema")
    plan_sub = plan.add_subparsers(dest="plan_command", required=True)
    validate = plan_sub.add_parser("validate", help="validate PLAN.yaml")
    validate.add_argument("plan")
    validate.add_argument("--json", action="store_true")
    validate.set_defaults(handler=cmd_plan_validate)
    schema = plan_sub.add_parser("schema", help="print the plan's JSON Schema")
    schema.add_argument("--json", action="store_true", help="compact, one line")
    schema.set_defaults(handler=cmd_plan_schema)

    start = command("start", cmd_start, "start a migration from PLAN.yaml")
    start.add_argument("plan")
    start.add_argument("--id", help="workflow id (default: <plan name>-<random>)")
    start.add_argument("--wait", action="store_true", help="wait for the outcome; exit 1 unless completed")

    for name, handler, help in (
        ("status", cmd_status, "a migration's phase, stage, traffic, verdicts, gate and audit log"),
        ("watch", cmd_watch, "follow a migration until it ends"),
    ):
        command(name, handler, help, json_flag=name != "watch").add_argument("id")
    command("list", cmd_list, "recent migrations with their phase, traffic and verdict")

    approve = command("approve", cmd_approve, "approve the gate a migration waits at")
    approve.add_argument("id")
    approve.add_argument("--stage", required=True, help="the pending gate, as `status` shows it")
    approve.add_argument("--by", default=os.environ.get("USER", "operator"))
    approve.add_argument("--note", default="")

    rollback = command("rollback", cmd_rollback, "force a rollback: compensations run in reverse")
    rollback.add_argument("id")
    rollback.add_argument("--reason", required=True)
    rollback.add_argument("--by", default=os.environ.get("USER", "operator"))

    for name, resume in (("pause", False), ("resume", True)):
        p = command(name, _pause_command(resume), f"{name} a migration at its next step")
        p.add_argument("id")
        p.add_argument("--by", default=os.environ.get("USER", "operator"))
        p.add_argument("--note", default="")

    for name, action, help in (("skip-stage", "skip_stage", "end the current cutover stage now, go to the next"),
                               ("promote", "promote", "go straight to the final (100%) cutover stage")):  # fmt: skip
        p = command(name, _stage_command(action), help)
        p.add_argument("id")
        p.add_argument("--by", default=os.environ.get("USER", "operator"))
        p.add_argument("--note", default="")

    bench = command("bench", cmd_bench, "run the GPU/CPU benchmark suite here")
    bench.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    bench.add_argument("--trials", type=int, default=3)
    bench.add_argument("--size", type=int, default=1024, help="matmul size")
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    load_stack_env()
    try:
        return args.handler(args)
    except PlanError as error:
        print(str(error), file=sys.stderr)
        return EXIT_INVALID
    except UsageError as error:
        print(f"skyshift: {error}", file=sys.stderr)
        return EXIT_INVALID
    except ConnectionError as error:
        print(f"skyshift: {error}", file=sys.stderr)
        return EXIT_FAILED
    except RPCError as error:
        hint = ""
        if error.status == RPCStatusCode.DEADLINE_EXCEEDED:
            hint = " (no worker answered: is `skyshift worker --control` running against this server?)"
        elif error.status == RPCStatusCode.NOT_FOUND:
            hint = " (check the migration id with `skyshift list`)"
        print(f"skyshift: Temporal: {error.message}{hint}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
