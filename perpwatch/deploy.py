"""`make deploy`: run every scheduled perpwatch job on this machine.

Starts a Prefect server on loopback, creates the `perpwatch` process work pool and its queues,
deploys everything in prefect.yaml (`prefect deploy --all`) and starts a worker, then stays in
the foreground until Ctrl-C, when it stops the worker and the server (and what they started).
docs/deploy.md explains the jobs, their schedules and concurrency limits.

    python -m perpwatch.deploy [--port 4200] [--home .prefect] [--api-url URL] [--no-worker]

The pieces are plain functions (start_server, setup_pool, deploy_all, start_worker, stop) so
tests/test_deploy.py drives exactly the same steps against the simulator. The API is spoken to with
Prefect's own client (`prefect.client.orchestration.get_client(sync_client=True)`: health, work pool
and queues, deployments, triggering and waiting for runs); process trees are walked with psutil.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from perpwatch.core import settings
from perpwatch.core.settings import ROOT

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

POOL = "perpwatch"
# Work queue -> concurrency limit. `warehouse` serialises every job that writes DuckDB (one writer
# process at a time); `collector` holds the long-running websocket collector.
QUEUES = {"warehouse": 1, "collector": 1}
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_TASKS_DEFAULT_NO_CACHE": "true",
    "PREFECT_CLI_COLORS": "false",
    "PREFECT_CLI_WRAP_LINES": "false",
}
SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL)", re.I)


def prefect_bin() -> str:
    exe = Path(sys.executable).with_name("prefect")
    return str(exe) if exe.exists() else "prefect"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def environment(home: Path, api_url: str, base: dict | None = None) -> dict[str, str]:
    """The environment for the prefect CLI, the server and the worker (and so every flow run)."""
    env = dict(os.environ if base is None else base)
    for k, v in PREFECT_DEFAULTS.items():
        env.setdefault(k, v)
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_API_URL"] = api_url
    # Flow-run logs go to the server (the UI's run pages) at INFO, whatever the CLI defaults say
    # (the Makefile and perpwatch.core.quiet keep interactive commands at WARNING).
    env["PREFECT_LOGGING_LEVEL"] = settings.get().deploy_log_level if base is None else (
        base.get("PERPWATCH_DEPLOY_LOG_LEVEL") or settings.Settings.model_fields["deploy_log_level"].default)
    env["PREFECT_LOGGING_TO_API_ENABLED"] = "true"
    env.setdefault("PYTHONUNBUFFERED", "1")
    # One glibc malloc arena from process start (perpwatch.core.memory.one_arena says why): in a flow-run process
    # Prefect's own threads have allocated before the flow imports perpwatch, which can then no longer set it.
    env.setdefault("MALLOC_ARENA_MAX", "1")
    return env


@contextmanager
def client(api_url: str, timeout: float = 10.0) -> Iterator[SyncPrefectClient]:
    """Prefect's own synchronous API client for `api_url` (auth from the usual Prefect settings)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        c = get_client(sync_client=True, httpx_settings={"timeout": timeout})
    with c:
        yield c


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    """The API answers /health (a refused connection fails fast: Prefect retries only once connected)."""
    try:
        with client(api_url, timeout=timeout) as c:
            return c.api_healthcheck() is None
    except Exception:  # noqa: BLE001 - a bad URL is "not healthy", whatever httpx raises
        return False


# --------------------------------------------------------------------------- processes

def children(pid: int) -> list[int]:
    """Every live descendant of pid (psutil), deepest last."""
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _running(p: psutil.Process) -> bool:
    """Still there and not a zombie (is_running also guards against a reused pid)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _alive(pid: int) -> bool:
    try:
        return _running(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def stop(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """Stop a process we started, its process group and every descendant (flow runs start their
    own sessions): SIGTERM, wait up to `grace` seconds, then SIGKILL. A worker started from a
    non-interactive shell may ignore SIGTERM for ~70 s, hence the KILL."""
    if proc is None:
        return
    try:
        leader = psutil.Process(proc.pid)
        tree = [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)          # the leader's group (what it started without a new session)
        except (ProcessLookupError, PermissionError):
            pass
        for p in tree[1:]:                    # descendants in their own sessions
            try:
                p.send_signal(sig)            # psutil checks the pid was not reused
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()   # reap our direct child so it does not linger as a zombie
            if not any(_running(p) for p in tree):
                break
            time.sleep(0.2)
        if not any(_running(p) for p in tree):
            break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- steps

def start_server(env: dict, port: int, log: Path, timeout: float = 120.0) -> subprocess.Popen:
    """`prefect server start` on 127.0.0.1:port, in its own process group; returns once healthy."""
    api_url = f"http://127.0.0.1:{port}/api"
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")
    proc = subprocess.Popen([prefect_bin(), "server", "start", "--host", "127.0.0.1", "--port", str(port),
                             "--analytics-off"],
                            env={**env, "PREFECT_API_URL": api_url}, cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    out.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}; {log}:\n{_tail(log)}")
        if healthy(api_url):
            return proc
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"prefect server not healthy after {timeout:.0f}s; {log}:\n{_tail(log)}")


def prefect(env: dict, *args: str, timeout: float = 300.0, check: bool = True) -> subprocess.CompletedProcess:
    """Run the prefect CLI (non-interactive) in the repository."""
    res = subprocess.run([prefect_bin(), "--no-prompt", *args], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n"
                           f"{res.stderr[-3000:]}")
    return res


def setup_pool(api_url: str, limits: dict[str, int] | None = None) -> None:
    """The process work pool and its queues with their concurrency limits (idempotent), like
    `prefect work-pool create --type process --overwrite` + `prefect work-queue create --limit N`."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    with client(api_url) as c:
        c.create_work_pool(WorkPoolCreate(name=POOL, type="process",
                                          base_job_template=ProcessWorker.get_default_base_job_template()),
                           overwrite=True)
        have = {q.name: q for q in c.read_work_queues(work_pool_name=POOL)}
        for queue, limit in (limits or QUEUES).items():
            if queue not in have:
                c.create_work_queue(name=queue, work_pool_name=POOL, concurrency_limit=limit)
            elif have[queue].concurrency_limit != limit:   # exists already: make sure the limit is what we say
                c.update_work_queue(have[queue].id, concurrency_limit=limit)


def queue_limits(api_url: str) -> dict[str, int | None]:
    """Work queue -> concurrency limit, as the server has them for our pool."""
    with client(api_url) as c:
        return {q.name: q.concurrency_limit for q in c.read_work_queues(work_pool_name=POOL)}


def deploy_all(env: dict) -> str:
    """`prefect deploy --all` of prefect.yaml; returns the CLI output."""
    return prefect(env, "deploy", "--all", "--prefect-file", str(ROOT / "prefect.yaml")).stdout


def crash_leftovers(api_url: str) -> list[str]:
    """Runs still Pending/Running on our pool belong to a worker that is gone (we start the only one):
    mark them Crashed so they stop holding the queue's and the deployment's concurrency slot."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    with client(api_url) as c:
        runs = c.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[POOL])))
        for r in runs:
            c.set_flow_run_state(r.id, Crashed(message="worker restarted by perpwatch.deploy; run did not finish"),
                                 force=True)
    return [r.name for r in runs]


def database_url(url: str) -> str:
    """PREFECT_API_DATABASE_CONNECTION_URL for the server: postgresql://… becomes postgresql+asyncpg://…
    (the driver Prefect's server uses: asyncpg, pinned in pyproject.toml)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    return url


def planned_limits(env: dict, workers: int) -> dict[str, int]:
    """On the DuckLake backend (PERPWATCH_CATALOG) writers commit concurrently: the warehouse queue
    admits one run per worker instead of one in all. Each deployment keeps its own limit of 1."""
    if env.get("PERPWATCH_CATALOG"):
        return {**QUEUES, "warehouse": max(1, workers)}
    return dict(QUEUES)


def start_worker(env: dict, log: Path | None = None, index: int = 0) -> subprocess.Popen:
    """`prefect worker start --pool perpwatch` in its own process group (output to `log` or inherited)."""
    out = open(log, "ab") if log else None
    try:
        return subprocess.Popen([prefect_bin(), "worker", "start", "--pool", POOL, "--type", "process",
                                 "--name", f"perpwatch-{socket.gethostname()}" + (f"-{index}" if index else "")],
                                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT if out else None,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        if out:
            out.close()


def check_environment(env: dict) -> list[str]:
    """Names (never values) of variables that look like secrets: the worker passes its environment
    to flow runs, so say which ones will be there, without printing them."""
    return sorted(k for k in env if SECRET_NAME.search(k) and not k.startswith("PREFECT_"))


@dataclass
class Stack:
    """A server (unless an external API is given) and a worker, set up for prefect.yaml."""

    home: Path
    port: int = 4200
    api_url: str | None = None
    base_env: dict | None = None
    worker_log: Path | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)
    deploy_output: str = ""
    workers: int = 1
    database_url: str | None = None     # PostgreSQL for the server's own database (else SQLite in home)
    # False: the server creates no scheduled runs (its scheduler service off), so only triggered runs
    # execute. Tests run the deployments at fixed windows: with the scheduler on, a worker polling near
    # xx:00 picks up the hourly liquidations run (and near xx:05 the hourly ingest), and the wall clock
    # decides what lands in the warehouse under test.
    scheduler: bool = True

    def __post_init__(self):
        self.home = Path(self.home).resolve()
        self.external = self.api_url is not None
        self.api_url = self.api_url or f"http://127.0.0.1:{self.port}/api"
        self.env = environment(self.home, self.api_url, self.base_env)
        if self.database_url:
            self.env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url(self.database_url)
        if not self.scheduler:
            self.env["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"] = "false"

    def up(self, worker: bool = True, say=lambda _m: None) -> Stack:
        try:
            if not self.external:
                say(f"starting Prefect server on {self.api_url.removesuffix('/api')} "
                    f"(PREFECT_HOME={self.home}; log {self.home / 'logs' / 'server.log'})")
                self.procs.append(start_server(self.env, self.port, self.home / "logs" / "server.log"))
            elif not healthy(self.api_url):
                raise RuntimeError(f"no Prefect API answering at {self.api_url}")
            say(f"work pool {POOL!r} (process) with queues "
                + ", ".join(f"{q} (limit {n})" for q, n in QUEUES.items()))
            setup_pool(self.api_url, planned_limits(self.env, self.workers))
            say("prefect deploy --all (prefect.yaml)")
            self.deploy_output = deploy_all(self.env)
            crashed = crash_leftovers(self.api_url)
            if crashed:
                say(f"marked {len(crashed)} unfinished run(s) of a previous worker Crashed: {', '.join(crashed)}")
            if worker:
                say(f"starting {self.workers} worker(s) on pool {POOL!r}")
                for i in range(self.workers):
                    self.procs.append(start_worker(self.env, self.worker_log, index=i))
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        for proc in reversed(self.procs):   # worker first, then the server
            stop(proc)
        self.procs.clear()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.down()


def _schedule_text(schedule) -> str:
    """'15 0 * * * UTC' for a cron schedule, '<seconds> <tz>' for an interval one."""
    every = getattr(schedule, "cron", None) or getattr(schedule, "interval", None)
    if hasattr(every, "total_seconds"):
        every = every.total_seconds()
    return f"{every} {getattr(schedule, 'timezone', None) or ''}".strip()


def deployments(api_url: str) -> list[dict]:
    """Every deployment on the server: name (flow/deployment), schedules, queue, concurrency."""
    with client(api_url) as c:
        flows = {f.id: f.name for f in c.read_flows()}
        deps = c.read_deployments()
    out = []
    for d in deps:
        collision = d.concurrency_options.collision_strategy if d.concurrency_options else None
        out.append({"name": f"{flows.get(d.flow_id, '?')}/{d.name}",
                    "schedule": ", ".join(_schedule_text(s.schedule) for s in d.schedules) or "manual",
                    "queue": d.work_queue_name,
                    "limit": d.global_concurrency_limit.limit if d.global_concurrency_limit else None,
                    "collision": getattr(collision, "value", collision)})
    return sorted(out, key=lambda x: x["name"])


def trigger(api_url: str, name: str, parameters: dict | None = None) -> str:
    """Start a run of deployment `flow/deployment` now (like `prefect deployment run`); its id."""
    with client(api_url) as c:
        dep = c.read_deployment_by_name(name)
        return str(c.create_flow_run_from_deployment(dep.id, parameters=parameters or {}).id)


TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def wait_for_run(api_url: str, run_id: str, timeout: float, poll: float = 1.0):
    """The flow run once its state is terminal (Prefect's FlowRun); TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    with client(api_url) as c:
        while True:
            fr = c.read_flow_run(uuid.UUID(run_id))
            if fr.state_type is not None and fr.state_type.value in TERMINAL:
                return fr
            if time.monotonic() >= deadline:
                raise TimeoutError(f"flow run {run_id} not finished after {timeout:.0f}s: {fr.state_type}")
            time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perpwatch.deploy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=settings.get().prefect_port,
                    help="loopback port of the Prefect server and UI (default 4200; 0 = any free port)")
    ap.add_argument("--home", default=str(settings.get().prefect_home or ROOT / ".prefect"),
                    help="PREFECT_HOME: server database, logs (default $PREFECT_HOME or .prefect)")
    ap.add_argument("--api-url", help="use this running Prefect API instead of starting a server")
    ap.add_argument("--no-worker", action="store_true", help="deploy, then keep only the server running")
    ap.add_argument("--workers", type=int, default=settings.get().workers,
                    help="process workers to start on the pool (default 1; several need PERPWATCH_CATALOG)")
    ap.add_argument("--database-url", default=settings.get().prefect_database_url,
                    help="PostgreSQL URL for the Prefect server's own database "
                         "(default $PREFECT_API_DATABASE_CONNECTION_URL; unset = SQLite in --home)")
    args = ap.parse_args(argv)
    if args.workers > 1 and not settings.get().catalog:
        print("--workers N > 1 needs the DuckLake backend (PERPWATCH_CATALOG): the DuckDB file admits one "
              "writer process", file=sys.stderr)
        return 2

    def say(msg: str) -> None:
        print(f"[deploy] {msg}", flush=True)

    port = args.port or free_port()
    if not args.api_url and port_in_use(port):
        print(f"port {port} is in use (another Prefect server?). Stop it, pick --port N, or reuse it with "
              f"--api-url http://127.0.0.1:{port}/api", file=sys.stderr)
        return 2
    stack = Stack(home=Path(args.home), port=port, api_url=args.api_url, workers=args.workers,
                  database_url=args.database_url)
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):   # also when started in the background
        signal.signal(sig, on_signal)
    try:
        stack.up(worker=not args.no_worker, say=say)
        names = check_environment(stack.env)
        if names:
            say("the worker passes its environment to flow runs, including: " + ", ".join(names)
                + " (values never logged)")
        say("deployments:")
        for d in deployments(stack.api_url):
            say(f"  {d['name']:34s} {d['schedule']:28s} queue={d['queue']} "
                f"limit={d['limit']} {d['collision'] or ''}")
        ui = stack.api_url.removesuffix("/api")
        say(f"UI: {ui}   (export PREFECT_API_URL={stack.api_url} to use the prefect CLI)")
        say("run one now: prefect deployment run 'perpwatch-daily/daily'   — Ctrl-C stops worker and server")
        while not stopping:
            for proc in stack.procs:
                if proc.poll() is not None:
                    say(f"process {proc.args[1:3]} exited with {proc.returncode}; stopping")
                    return 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(f"deploy failed: {exc}", file=sys.stderr)
        return 1
    finally:
        say("stopping worker and server ...")
        stack.down()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
