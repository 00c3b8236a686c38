"""`make deploy`: run every scheduled perpwatch job on this machine.

Starts a Prefect server on loopback, creates the `perpwatch` process work pool and its queues,
deploys everything in prefect.yaml (`prefect deploy --all`) and starts a worker, then stays in
the foreground until Ctrl-C, when it stops the worker and the server (and what they started).
docs/deploy.md explains the jobs, their schedules and concurrency limits.

    python -m perpwatch.deploy [--port 4200] [--home .prefect] [--api-url URL] [--no-worker]

The pieces are plain functions (start_server, setup_pool, deploy_all, start_worker, stop) so
tests/test_deploy.py drives exactly the same steps against the simulator.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from perpwatch.settings import ROOT

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
    # (the Makefile and perpwatch.quiet keep interactive commands at WARNING).
    env["PREFECT_LOGGING_LEVEL"] = env.get("PERPWATCH_DEPLOY_LOG_LEVEL", "INFO")
    env["PREFECT_LOGGING_TO_API_ENABLED"] = "true"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def api(api_url: str, method: str, path: str, body: dict | None = None, timeout: float = 10.0):
    """A small JSON call to the Prefect REST API (stdlib only)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{api_url}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


# --------------------------------------------------------------------------- processes

def children(pid: int) -> list[int]:
    """Every descendant of pid (Linux /proc), deepest last."""
    parent: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parent.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in parent.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def stop(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """Stop a process we started, its process group and every descendant (flow runs start their
    own sessions): SIGTERM, wait up to `grace` seconds, then SIGKILL. A worker started from a
    non-interactive shell may ignore SIGTERM for ~70 s, hence the KILL."""
    if proc is None:
        return
    pids = [proc.pid, *children(proc.pid)]
    for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                if pid == proc.pid:
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()   # reap our direct child so it does not linger as a zombie
            if not any(_alive(p) for p in pids):
                break
            time.sleep(0.2)
        if not any(_alive(p) for p in pids):
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


def setup_pool(env: dict, limits: dict[str, int] | None = None) -> None:
    """The process work pool and its queues with their concurrency limits (idempotent)."""
    prefect(env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    for queue, limit in (limits or QUEUES).items():
        made = prefect(env, "work-queue", "create", queue, "--pool", POOL, "--limit", str(limit), check=False)
        if made.returncode != 0:   # exists already: make sure the limit is what we say
            prefect(env, "work-queue", "set-concurrency-limit", queue, str(limit), "--pool", POOL)


def deploy_all(env: dict) -> str:
    """`prefect deploy --all` of prefect.yaml; returns the CLI output."""
    return prefect(env, "deploy", "--all", "--prefect-file", str(ROOT / "prefect.yaml")).stdout


def crash_leftovers(api_url: str) -> list[str]:
    """Runs still Pending/Running on our pool belong to a worker that is gone (we start the only one):
    mark them Crashed so they stop holding the queue's and the deployment's concurrency slot."""
    runs = api(api_url, "POST", "/flow_runs/filter", {
        "flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING"]}}},
        "work_pools": {"name": {"any_": [POOL]}}}) or []
    for r in runs:
        api(api_url, "POST", f"/flow_runs/{r['id']}/set_state", {
            "state": {"type": "CRASHED", "name": "Crashed",
                      "message": "worker restarted by perpwatch.deploy; run did not finish"},
            "force": True})
    return [r["name"] for r in runs]


def database_url(url: str) -> str:
    """PREFECT_API_DATABASE_CONNECTION_URL for the server: postgresql://… becomes postgresql+asyncpg://…
    (the driver Prefect's server uses; asyncpg ships with Prefect)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    return url


def queue_limits(env: dict, workers: int) -> dict[str, int]:
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

    def __post_init__(self):
        self.home = Path(self.home).resolve()
        self.external = self.api_url is not None
        self.api_url = self.api_url or f"http://127.0.0.1:{self.port}/api"
        self.env = environment(self.home, self.api_url, self.base_env)

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
            setup_pool(self.env, queue_limits(self.env, self.workers))
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


def deployments(api_url: str) -> list[dict]:
    flows = {f["id"]: f["name"] for f in api(api_url, "POST", "/flows/filter", {}) or []}
    out = []
    for d in api(api_url, "POST", "/deployments/filter", {}) or []:
        sched = [s.get("schedule", {}) for s in d.get("schedules", [])]
        out.append({"name": f"{flows.get(d['flow_id'], '?')}/{d['name']}",
                    "schedule": ", ".join(f"{s.get('cron') or s.get('interval')} {s.get('timezone') or ''}".strip()
                                          for s in sched) or "manual",
                    "queue": d.get("work_queue_name"),
                    "limit": (d.get("global_concurrency_limit") or {}).get("limit"),
                    "collision": (d.get("concurrency_options") or {}).get("collision_strategy")})
    return sorted(out, key=lambda x: x["name"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perpwatch.deploy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=int(os.environ.get("PERPWATCH_PREFECT_PORT", "4200")),
                    help="loopback port of the Prefect server and UI (default 4200; 0 = any free port)")
    ap.add_argument("--home", default=os.environ.get("PREFECT_HOME", str(ROOT / ".prefect")),
                    help="PREFECT_HOME: server database, logs (default $PREFECT_HOME or .prefect)")
    ap.add_argument("--api-url", help="use this running Prefect API instead of starting a server")
    ap.add_argument("--no-worker", action="store_true", help="deploy, then keep only the server running")
    ap.add_argument("--workers", type=int, default=int(os.environ.get("PERPWATCH_WORKERS", "1")),
                    help="process workers to start on the pool (default 1; several need PERPWATCH_CATALOG)")
    ap.add_argument("--database-url", default=os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL"),
                    help="PostgreSQL URL for the Prefect server's own database "
                         "(default $PREFECT_API_DATABASE_CONNECTION_URL; unset = SQLite in --home)")
    args = ap.parse_args(argv)
    if args.database_url:
        os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url(args.database_url)
    if args.workers > 1 and not os.environ.get("PERPWATCH_CATALOG"):
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
    stack = Stack(home=Path(args.home), port=port, api_url=args.api_url, workers=args.workers)
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
