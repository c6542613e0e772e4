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
import traceback
from collections.abc import Callable
from typing import NoReturn

from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from skyshift import __version__
from skyshift.process import exit_process
from skyshift.runtime import load_stack_env, ui_link
from starters.common import EXIT_FAILED, EXIT_INVALID, EXIT_OK, UsageError, emit, fail, with_client
from workflows.plan import PlanError


def rejected(what: str, error: WorkflowUpdateFailedError) -> UsageError:
    """An update the workflow's validator refused: invalid input, with the validator's reason."""
    return UsageError(f"{what}: rejected: {getattr(error.cause, 'message', None) or error}")


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

        try:
            handle = await operate.start_migration(client, plan, args.id)
        except WorkflowAlreadyStartedError:
            raise UsageError(
                f"--id {args.id}: a migration with this id already exists (ids are never reused): "
                f"see `skyshift status {args.id}`, or start with another --id"
            ) from None
        if not args.wait:
            emit(
                args,
                {"id": handle.id, "run_id": handle.result_run_id, "ui": ui_link(handle.id)},
                f"started {handle.id}\n  watch: skyshift watch {handle.id}\n  UI:    {ui_link(handle.id)}",
            )
            return EXIT_OK
        from starters.reconnect import patiently

        async def settled():  # an outcome, or completed into its failback window
            return await operate.follow(client, handle.id, lambda state, previous: None, interval=1.0,
                                        until=lambda state: state.in_failback_window)  # fmt: skip

        state = await patiently(settled, f"waiting for {handle.id}")
        emit(args, state.model_dump(mode="json"), render.summary(state, ui_link(handle.id)))
        return EXIT_OK if state.outcome == "completed" or state.in_failback_window else EXIT_FAILED

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

    rows = await operate.list_migrations(client, limit=args.limit, query=args.query)
    text = "\n".join(
        f"{r['id']:<40} {r['status']:<11} {r['phase'] or '-':<14} "
        f"{r['traffic_percent'] or 0:>3}%  {r['outcome'] or r['verdict'] or '-'}"
        for r in rows
    )
    emit(args, {"migrations": rows}, text or "no migrations")
    return EXIT_OK


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

    try:
        how = await operate.rollback(client, args.id, args.reason, args.by)
    except WorkflowUpdateFailedError as error:
        raise UsageError(f"rollback of {args.id} ignored: {getattr(error.cause, 'message', None) or error}") from None
    except operate.AlreadyClosed as error:
        raise UsageError(f"rollback ignored: {error}") from None
    note = "" if how == "accepted" else " (sent as a signal: this worker predates request_rollback)"
    emit(
        args,
        {"id": args.id, "rollback_requested": True, "by": args.by, "delivery": how},
        f"rollback requested on {args.id}{note}; follow it with: skyshift watch {args.id}",
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
    if args.metrics_port is not None:
        argv += ["--metrics-port", str(args.metrics_port)]
    if args.encrypt:
        argv.append("--encrypt")
    os.execv(sys.executable, argv)
    return EXIT_FAILED  # not reached


def cmd_demo(args: argparse.Namespace) -> int:
    from starters.demo import run_demo

    return run_demo(args.scenario, json_output=args.json)


def cmd_codec_server(args: argparse.Namespace) -> int:
    from skyshift.codec import CodecConfigError, codec_from_env, codec_server
    from skyshift.runtime import temporal_ui

    try:
        codec = codec_from_env()
    except CodecConfigError as error:
        raise UsageError(str(error)) from None
    origins = args.ui_origin or [temporal_ui()]
    server = codec_server(codec, args.host, args.port, origins)
    url = f"http://{args.host}:{server.server_address[1]}"
    emit(
        args,
        {"url": url, "key_id": codec.key_id, "ui_origins": origins},
        f"codec server on {url} (key {codec.key_id}), answering the UI at {', '.join(origins)}\n"
        f"  Temporal UI: set the codec endpoint to {url} (or `temporal server start-dev --ui-codec-endpoint {url}`)\n"
        f"  Temporal CLI: temporal workflow show --workflow-id ID --codec-endpoint {url}",
    )
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return EXIT_OK


# -- parser -------------------------------------------------------------------------------------

#: Modules that add their own subcommands, each named `cmd_<command>.py` with `add_commands(sub)`: each
#: sets `handler` on its parsers and imports heavy libraries (torch) only inside its handlers.
COMMAND_MODULES: tuple[str, ...] = (
    "starters.cmd_sync",
    "starters.cmd_watch",
    "starters.cmd_report",
    "starters.cmd_bench",
    "starters.cmd_checkpoint",
    "starters.cmd_failback",
    "starters.cmd_place",
)

BY_HELP = "who is acting, for the audit log (default: $USER)"


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one JSON object on stdout when the command line asks for `--json`."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if Parser.json_errors:
            print(json.dumps({"error": f"{self.prog}: {message}", "exit_code": EXIT_INVALID}))
            sys.exit(EXIT_INVALID)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="skyshift", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"skyshift {__version__}")
    parser.add_argument(
        "--encrypt",
        action="store_true",
        help="encrypt payloads with the AES-GCM codec (key from SKYSHIFT_CODEC_KEY or SKYSHIFT_CODEC_KMS_KEY_ID); "
        "the same as SKYSHIFT_ENCRYPT=1",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler, help: str, json_flag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help.replace("%%", "%"))
        p.set_defaults(handler=handler)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print one JSON object on stdout (errors too)")
        return p

    def operator(p: argparse.ArgumentParser, note: bool = True) -> None:
        p.add_argument("id", help="the migration's workflow id (`skyshift list` shows them)")
        p.add_argument("--by", default=os.environ.get("USER", "operator"), help=BY_HELP)
        if note:
            p.add_argument("--note", default="", help="a note for the audit log")

    dev = command("dev", cmd_dev, "embedded stack on 127.0.0.1 (Temporal, S3, GCS), state under .skyshift/")
    dev.add_argument("action", choices=["up", "down", "status"], help="start, stop, or report the embedded stack")

    worker = command("worker", cmd_worker, "run a worker for one task queue", json_flag=False)
    which = worker.add_mutually_exclusive_group(required=True)
    which.add_argument("--env", help="serve the task queue skyshift.<ENV>")
    which.add_argument("--control", action="store_true", help="serve skyshift.control (workflows, analysis)")
    worker.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (SDK + skyshift)")

    demo = command("demo", cmd_demo, "a full migration on the embedded stack, end to end")
    demo.add_argument("--scenario", choices=["ok", "regression", "drift", "bad-resume"], default="ok",
                      help="ok: completes; regression: the target slows at 25%% and it rolls back; drift: the "
                      "target's outputs drift beyond the noise and the shadow phase rolls it back; bad-resume: the "
                      "target resumes the handed-off job with its dataloader restarted, the parallel run rolls it "
                      "back")  # fmt: skip

    plan = sub.add_parser("plan", help="validate a plan or print its JSON Schema",
                          description="validate a plan or print its JSON Schema")  # fmt: skip
    plan_sub = plan.add_subparsers(dest="plan_command", required=True, metavar="ACTION")
    validate = plan_sub.add_parser("validate", help="validate PLAN.yaml", description="validate PLAN.yaml")
    validate.add_argument("plan", help="the plan file (YAML or JSON)")
    validate.add_argument("--json", action="store_true", help="print one JSON object on stdout (errors too)")
    validate.set_defaults(handler=cmd_plan_validate)
    schema = plan_sub.add_parser("schema", help="print the plan's JSON Schema",
                                 description="print the plan's JSON Schema")  # fmt: skip
    schema.add_argument("--json", action="store_true", help="compact, one line")
    schema.set_defaults(handler=cmd_plan_schema)

    start = command("start", cmd_start, "start a migration from PLAN.yaml")
    start.add_argument("plan", help="the plan file (YAML or JSON); validated before anything starts")
    start.add_argument("--id", help="workflow id, never reused (default: <plan name>-<random>)")
    start.add_argument(
        "--wait", action="store_true",
        help="wait until it completes (into its failback window) or ends otherwise; exit 1 unless completed",
    )

    status = command("status", cmd_status, "a migration's phase, stage, traffic, verdicts, gate and audit log")
    status.add_argument("id", help="the migration's workflow id")
    listing = command("list", cmd_list, "recent migrations with their phase, traffic and verdict")
    listing.add_argument("--query", help="a Temporal list filter, e.g. 'SkyshiftPhase=\"cutover\"' (see README)")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")

    approve = command("approve", cmd_approve, "approve the gate a migration waits at")
    operator(approve)
    approve.add_argument("--stage", required=True, help="the pending gate, as `status` shows it")

    rollback = command("rollback", cmd_rollback, "force a rollback: compensations run in reverse")
    operator(rollback, note=False)
    rollback.add_argument("--reason", required=True, help="why, for the audit log and the report")

    for name, resume in (("pause", False), ("resume", True)):
        operator(command(name, _pause_command(resume), f"{name} a migration at its next step"))

    for name, action, help in (("skip-stage", "skip_stage", "end the current cutover stage now, go to the next"),
                               ("promote", "promote", "go straight to the final (100%%) cutover stage")):  # fmt: skip
        operator(command(name, _stage_command(action), help))

    codec = command("codec-server", cmd_codec_server, "decrypt payloads for the Temporal UI and CLI (AES-GCM codec)")
    codec.add_argument("--host", default="127.0.0.1", help="listen address (default loopback: only this machine)")
    codec.add_argument("--port", type=int, default=8081, help="listen port (default 8081; 0 picks a free one)")
    codec.add_argument(
        "--ui-origin",
        action="append",
        help="a Temporal UI origin that may call it (CORS); repeatable; default: $TEMPORAL_UI",
    )

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """A subcommand given only `help=` (as command modules often do) shows the same text as its description."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                child = action.choices[choice.dest]
                child.description = child.description or (choice.help or "").replace("%%", "%")
                _describe(child)


def _quiet_broken_pipe() -> int:
    """The reader went away (`skyshift status X | head`): stop writing, exit without a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code; run as the program (no `argv`), end the process with it."""
    if argv is None:
        try:
            code = _main(sys.argv[1:])
        except SystemExit as done:  # argparse (--help, usage errors) and commands that exit themselves
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else EXIT_FAILED)
            if done.code is not None and not isinstance(done.code, int):
                print(done.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = EXIT_FAILED
        exit_process(code)
    return _main(list(argv))


def _main(argv: list[str]) -> int:
    Parser.json_errors = "--json" in argv
    args = build_parser().parse_args(argv)
    if args.encrypt:
        os.environ["SKYSHIFT_ENCRYPT"] = "1"
    load_stack_env()
    try:
        return args.handler(args)
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except PlanError as error:
        return fail(args, EXIT_INVALID, str(error), prefix="")
    except UsageError as error:
        return fail(args, EXIT_INVALID, str(error))
    except ValueError as error:  # configuration: a codec key or an OTEL_* variable that cannot work
        from skyshift.codec import CodecConfigError
        from skyshift.telemetry import TelemetryConfigError

        if not isinstance(error, CodecConfigError | TelemetryConfigError):
            raise
        return fail(args, EXIT_INVALID, str(error))
    except ConnectionError as error:
        return fail(args, EXIT_FAILED, str(error))
    except RPCError as error:
        hint = ""
        if error.status == RPCStatusCode.DEADLINE_EXCEEDED:
            hint = " (no worker answered: is `skyshift worker --control` running against this server?)"
        elif error.status == RPCStatusCode.NOT_FOUND:
            hint = " (check the migration id with `skyshift list`)"
        return fail(args, EXIT_FAILED, f"Temporal: {error.message}{hint}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
