#!/usr/bin/env python3
"""cogflow's whole stack on one machine, without Docker: S3 (moto), MLflow, a Prefect server and workers.

    .venv/bin/python infra/stack.py up              # `make up`: start, deploy prefect.yaml, start the workers
    .venv/bin/python infra/stack.py status          # `make stack-status`
    eval "$(.venv/bin/python infra/stack.py env)"   # point this shell (cogflow, prefect, mlflow) at the stack
    .venv/bin/python infra/stack.py deploy          # after editing prefect.yaml: pools, limit, deployments again
    .venv/bin/python infra/stack.py down            # `make down`

Every service listens on 127.0.0.1 and runs in a session (process group) of its own, so `down` stops it with
whatever it started. The state dir (default .cogflow/stack) holds:

    stack.json          the ports of the running stack      pids/<service>.pid   logs/<service>.log
    prefect-server/     the Prefect server's PREFECT_HOME (SQLite database)
    mlflow.db           MLflow's backend store               home/      COGFLOW_HOME of the workers
    prefect/            PREFECT_HOME of the clients (deploy, workers)

S3 is moto's server: its objects (the lake, MLflow's artifacts, checkpoints) live in memory and are gone after
`down`. A registry whose artifacts are gone is worse than none, so `up` starts MLflow on a fresh database
whenever it starts a fresh S3 (the old one is kept as mlflow.db.orphaned). Prefect's database survives.

Plain standard library; PyYAML (a Prefect dependency) reads the pool names from prefect.yaml, and the Prefect
client creates the pools and the concurrency limit in a child process pointed at the stack.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from processes import stop_processes  # infra/processes.py and infra/services.py, beside this script
from services import (
    BIN,
    BUCKET,
    CHECKOUT,
    CHECKPOINTS,
    DEFAULT_PORTS,
    ENV_EXPORTS,
    GPU_LIMIT,
    LAKE,
    MLFLOW_ARTIFACTS,
    SERVERS,
    Service,
    Stack,
    StackError,
    clean_env,
    free_port,
    http_ok,
    port_in_use,
    work_pools,
)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join("    " + line for line in path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "    (no log)"


def wait_healthy(
    stack: Stack, started: dict[str, tuple[Service, subprocess.Popen]], timeout: float
) -> dict[str, float]:
    """Poll every started server's health URL; the seconds each took. A service that exits or does not answer
    in time is an error naming its log."""
    t0 = time.monotonic()
    pending = {name: pair for name, pair in started.items() if pair[0].health}
    took = {}
    while pending:
        for name, (service, child) in list(pending.items()):
            if http_ok(service.health, timeout=1.0):
                took[name] = time.monotonic() - t0
                del pending[name]
            elif child.poll() is not None:
                raise StackError(
                    f"{name} exited with code {child.returncode} before answering {service.health}; "
                    f"its log {stack.log_file(name)} ends with:\n{_tail(stack.log_file(name))}"
                )
        if pending and time.monotonic() - t0 > timeout:
            name = next(iter(pending))
            raise StackError(
                f"{name} did not answer {pending[name][0].health} within {timeout:.0f} s; "
                f"its log {stack.log_file(name)} ends with:\n{_tail(stack.log_file(name))}"
            )
        time.sleep(0.2)
    return took


def create_bucket(stack: Stack) -> None:
    """moto takes unsigned requests: one PUT makes the bucket (200, or 409 when it exists)."""
    request = urllib.request.Request(f"{stack.base_url('s3')}/{BUCKET}", method="PUT")
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as exc:
        if exc.code != 409:
            raise


def run_logged(stack: Stack, name: str, command: list[str], env: dict[str, str], timeout: float) -> None:
    log = stack.log_file(name)
    with open(log, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        out.flush()
        try:
            code = subprocess.run(
                command,
                env=env,
                cwd=CHECKOUT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            code = None
    if code != 0:
        why = "timed out" if code is None else f"failed with exit code {code}"
        raise StackError(f"`{' '.join(command[1:])}` {why}; {log} ends with:\n{_tail(log)}")


def deploy(stack: Stack, api_url: str, timeout: float) -> None:
    """Create the work pools and the GPU concurrency limit where missing, then `prefect deploy --all`.

    COGFLOW_CHECKOUT is left out of deploy's environment on purpose: `prefect deploy` replaces a {{ $VAR }} in the
    pull steps when VAR is set where it runs, and keeps the template when it is not. Kept, it is resolved by each
    flow run from its worker's environment, so a GPU machine whose checkout lives elsewhere works too."""
    pools = work_pools()
    env = clean_env(
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(stack.state / "prefect"),
        # `schedules: []` in prefect.yaml then removes schedules an earlier deploy created
        PREFECT_DEPLOYMENTS_CLEAR_SCHEDULES_ON_EMPTY="true",
    )
    run_logged(stack, "deploy", [sys.executable, __file__, "_bootstrap", *pools], env, timeout)
    run_logged(stack, "deploy", [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env, timeout)


def bootstrap(pools: list[str]) -> None:
    """(In a child pointed at the server by PREFECT_API_URL.) Process pools and the GPU limit, where missing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        for pool in pools:
            try:
                client.read_work_pool(pool)
                print(f"work pool {pool} exists")
            except ObjectNotFound:
                client.create_work_pool(
                    WorkPoolCreate(
                        name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
                    )
                )
                print(f"work pool {pool} created (process)")
        try:
            client.read_global_concurrency_limit_by_name(GPU_LIMIT)
            print(f"concurrency limit {GPU_LIMIT} exists")
        except ObjectNotFound:
            slots = int(os.environ.get("COGFLOW_GPU_SLOTS", "1"))
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=slots))
            print(f"concurrency limit {GPU_LIMIT} created ({slots} slot{'s' * (slots != 1)})")


def wait_workers(stack: Stack, started: dict[str, tuple[Service, subprocess.Popen]], timeout: float) -> None:
    """A worker is up once the server lists it as polling its pool."""
    t0 = time.monotonic()
    api = f"{stack.base_url('prefect')}/api"
    pending = dict(started)
    while pending:
        for name, (service, child) in list(pending.items()):
            request = urllib.request.Request(
                f"{api}/work_pools/{service.pool}/workers/filter",
                data=b"{}",
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(request, timeout=2) as reply:
                    if any(w["name"] == service.worker for w in json.load(reply)):
                        del pending[name]
                        continue
            if child.poll() is not None:
                raise StackError(
                    f"{name} exited with code {child.returncode}; its log {stack.log_file(name)} ends "
                    f"with:\n{_tail(stack.log_file(name))}"
                )
        if pending and time.monotonic() - t0 > timeout:
            name = next(iter(pending))
            raise StackError(f"{name} did not show up at {api} within {timeout:.0f} s; see {stack.log_file(name)}")
        time.sleep(0.5)


def _env_lines(stack: Stack) -> list[str]:
    env = stack.client_env()
    # Real credentials and endpoints of the shell would win over or mix with the stack's: drop them.
    return ["unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL"] + [f"export {k}={env[k]}" for k in ENV_EXPORTS]


def _short(path: Path) -> str:
    """`path` relative to the current directory where it is inside it."""
    with contextlib.suppress(ValueError):
        return str(path.absolute().relative_to(Path.cwd()))
    return str(path)


def _summary(stack: Stack, state_arg: str) -> str:
    me = f"{_short(Path(sys.executable))} {_short(Path(__file__))}"
    running = stack.running()
    workers = [name.removeprefix("worker-") for name in running if name.startswith("worker-")]
    lines = [
        f"  Prefect UI   {stack.base_url('prefect')}",
        f"  MLflow UI    {stack.base_url('mlflow')}",
        f"  S3 (moto)    {stack.base_url('s3')}   lake {LAKE}, MLflow artifacts {MLFLOW_ARTIFACTS}, checkpoints {CHECKPOINTS}",
        f"  workers      {', '.join(workers) if workers else 'none (start one: prefect worker start --pool <pool>)'}",
        f"  logs         {stack.log_dir}/",
        "",
        "Point a shell (cogflow, prefect, mlflow) at it:",
        *("  " + line for line in _env_lines(stack)),
        f'  (or: eval "$({me} env{state_arg})")',
        "",
        f"Stop it with: {'make down' if not state_arg else f'{me} down{state_arg}'}",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def locked(state: Path):
    import fcntl

    state.mkdir(parents=True, exist_ok=True)
    with open(state / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another infra/stack.py is working on {state}") from None
        yield


# --- commands -------------------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    stack = Stack(args.state)
    with locked(stack.state):
        for d in (stack.pid_dir, stack.log_dir, stack.state / "home", stack.state / "prefect"):
            d.mkdir(parents=True, exist_ok=True)
        pools = work_pools()
        running = stack.running()
        wanted = list(SERVERS) + ([] if args.no_worker else [f"worker-{p}" for p in pools])
        if all(name in running for name in wanted):
            print(f"cogflow stack already running (state {stack.state})")
            print(_summary(stack.load(), args.state_arg))
            return 0
        requested = {"s3": args.s3_port, "mlflow": args.mlflow_port, "prefect": args.prefect_port}
        if running:  # part of it runs (a service died, or workers were left out): keep the ports it has
            stack.load()
        for name in SERVERS:
            if name in running:
                continue
            port = requested[name] if requested[name] is not None else stack.ports.get(name, DEFAULT_PORTS[name])
            port = port or free_port()
            if port_in_use(port):
                raise StackError(
                    f"port {port} for {name} is in use: stop what listens there, or choose another "
                    f"with --{name}-port (0 picks a free one)"
                )
            stack.ports[name] = port
        stack.save()
        if "s3" not in running and (stack.state / "mlflow.db").exists():
            if "mlflow" in running:
                print(
                    "warning: S3 was not running: MLflow's runs and models point at artifacts that are gone "
                    "(`down`, then `up`, starts both afresh)",
                    file=sys.stderr,
                )
            else:
                (stack.state / "mlflow.db").replace(stack.state / "mlflow.db.orphaned")
                print(
                    "a fresh S3 has none of the old MLflow artifacts: MLflow starts on a fresh database "
                    f"(the old one is {stack.state / 'mlflow.db.orphaned'})"
                )

        started: dict[str, tuple[Service, subprocess.Popen]] = {}
        try:
            services = {s.name: s for s in stack.services(pools)}
            for name in SERVERS:
                if name not in running:
                    started[name] = (services[name], stack.start(services[name]))
            if running:
                print(f"already running: {', '.join(running)}")
            if started:
                print(f"starting {', '.join(started)}; waiting for their health checks (logs in {stack.log_dir})")
            took = wait_healthy(stack, started, args.timeout)
            for name, seconds in took.items():
                print(f"  {name:8} healthy after {seconds:4.1f} s  {services[name].url}")
            create_bucket(stack)
            t = time.monotonic()
            deploy(stack, f"{stack.base_url('prefect')}/api", args.timeout)
            print(
                f"  work pools {', '.join(pools)}, limit {GPU_LIMIT} and the deployments of prefect.yaml "
                f"in place ({time.monotonic() - t:.1f} s)"
            )
            workers = {}
            for name in wanted:
                if name.startswith("worker-") and name not in running:
                    workers[name] = started[name] = (services[name], stack.start(services[name]))
            if workers:
                wait_workers(stack, workers, args.timeout)
                print(f"  workers polling {', '.join(s.pool for s, _ in workers.values())}")
        except BaseException:
            if started:
                stop_processes({name: child.pid for name, (_, child) in started.items()}, timeout=10)
                for name in started:
                    stack.pid_file(name).unlink(missing_ok=True)
                print(f"stopped what this `up` had started ({', '.join(started)})", file=sys.stderr)
            raise
    print(f"\ncogflow stack is up in {time.monotonic() - t0:.1f} s (state {stack.state})")
    print(_summary(stack, args.state_arg))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    stack = Stack(args.state)
    if not stack.state.exists():
        print(f"nothing running (no {stack.state})")
        return 0
    with locked(stack.state):
        running = stack.running()
        if not running:
            print("nothing running")
            return 0
        workers = [n for n in running if n.startswith("worker-")]
        servers = [n for n in running if n not in workers]
        for batch in (workers, servers):  # workers first: their flow runs still report to the servers
            if not batch:
                continue
            for name, how in stop_processes({n: running[n] for n in batch}, args.timeout).items():
                stack.pid_file(name).unlink(missing_ok=True)
                print(f"stopped {name} (pid {running[name]}; {how})")
        (stack.state / "stack.json").unlink(missing_ok=True)
        if "s3" in running:
            print(
                "moto's S3 data (the lake, MLflow's artifacts, checkpoints) was in memory and is gone; "
                f"Prefect's database and the logs stay in {stack.state}"
            )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    stack = Stack(args.state).load()
    running = stack.running()
    pools = work_pools()
    print(f"cogflow stack (state {stack.state})")
    healthy = 0
    for service in stack.services(pools) if stack.ports else []:
        pid = running.get(service.name)
        if service.name in SERVERS:
            ok = pid is not None and http_ok(service.health, timeout=2.0)
            healthy += ok
            what = (
                f"running (pid {pid}), {'healthy' if ok else 'NOT answering ' + service.health}"
                if pid
                else "not running"
            )
            print(f"  {service.name:24} {what:50} {service.url}")
        else:
            what = f"running (pid {pid})" if pid else "not running"
            print(f"  {service.name:24} {what:50} pool {service.pool}")
    if not stack.ports:
        print("  not running (start it: make up)")
    return 0 if healthy == len(SERVERS) else (3 if not running else 1)


def cmd_env(args: argparse.Namespace) -> int:
    stack = Stack(args.state).load()
    if not stack.ports or "prefect" not in stack.running():
        print(f"cogflow stack is not running (state {stack.state}): make up", file=sys.stderr)
        return 1
    print("\n".join(_env_lines(stack)))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    stack = Stack(args.state)
    api = args.api
    if api is None:
        stack.load()
        if "prefect" not in stack.running():
            raise StackError(f"the stack is not running (state {stack.state}); start it (make up) or give --api URL")
        api = f"{stack.base_url('prefect')}/api"
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    (stack.state / "prefect").mkdir(parents=True, exist_ok=True)
    deploy(stack, api, args.timeout)
    print(f"work pools {', '.join(work_pools())}, limit {GPU_LIMIT} and the deployments of prefect.yaml are on {api}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_bootstrap"]:
        bootstrap(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="infra/stack.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--state",
        default=str(CHECKOUT / ".cogflow" / "stack"),
        help="where PIDs, logs, ports and databases go (default .cogflow/stack in the checkout)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for each service (up), or before SIGKILL (down; default 120 and 15)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start S3 (moto), MLflow, Prefect, deploy prefect.yaml, start the workers")
    for name in SERVERS:
        up.add_argument(
            f"--{name}-port",
            type=int,
            default=None,
            help=f"port of {name} (default {DEFAULT_PORTS[name]}; 0 picks a free one)",
        )
    up.add_argument("--no-worker", action="store_true", help="start everything but the workers")
    commands.add_parser("down", help="stop everything the stack started, workers first")
    commands.add_parser("status", help="show each service: running or not, its URL")
    commands.add_parser("env", help="print the `export` lines that point a shell at the stack")
    dep = commands.add_parser("deploy", help="create the pools and the GPU limit if missing, deploy prefect.yaml")
    dep.add_argument("--api", help="a Prefect API URL (default: the running stack's)")
    # Options are accepted before or after the command.
    for sub in commands.choices.values():
        sub.add_argument("--state", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    given_state = any(a == "--state" or a.startswith("--state=") for a in argv)
    args.state_arg = f" --state {args.state}" if given_state else ""
    args.state = Path(args.state).absolute()
    if args.command == "down" and not any(a.startswith("--timeout") for a in argv):
        args.timeout = 15.0
    try:
        return {"up": cmd_up, "down": cmd_down, "status": cmd_status, "env": cmd_env, "deploy": cmd_deploy}[
            args.command
        ](args)
    except StackError as exc:
        print(f"infra/stack.py {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
