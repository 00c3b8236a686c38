"""`make bi` / `perpwatch bi`: Apache Superset on loopback with the perpwatch dashboards.

Superset runs from its own virtual environment (`.venv-bi`, installed by `make bi-install` from
bi/constraints.txt), never from the pipeline's. This module only drives it from the outside:

1. `superset db upgrade` + `superset init` on a SQLite metadata database under PERPWATCH_BI_HOME
   (once per Superset version), and the admin user with the password from the environment;
2. gunicorn on 127.0.0.1 (one worker, threads);
3. the dashboards kept as text in bi/superset/ (Superset's YAML export format) imported through
   the REST import API with overwrite: rerunning replaces them, it never duplicates them. The
   database entry points at the serving snapshot (PERPWATCH_SERVING_DB) read-only through
   duckdb-engine; each dataset's columns are then synced from the file, so their descriptions
   are the warehouse's COMMENT ON text, and the table comment becomes the dataset description.

With the scale-out backend (PERPWATCH_CATALOG=postgresql://...) a second database entry reads the
DuckLake read-only: its extensions are installed offline into PERPWATCH_BI_HOME/duckdb_extensions
from the registry packages (bi/lake.py, in .venv-bi), and each connection opens
`ducklake:postgres:<catalog>` read-only as its default database (DuckDB's ATTACH ... (READ_ONLY) +
USE), so `marts.daily_signals` resolves as in the file. The lake backend publishes no serving
file, so the datasets (and with them every chart) are bound to the lake; the serving entry is
still registered when a serving file exists. A catalog password is not written into Superset's
metadata: it reaches libpq as PGPASSWORD in Superset's environment.

Superset opens a new DuckDB connection per query (NullPool) and caches no chart data
(bi/superset_config.py), so a snapshot swapped in by warehouse.publish() shows on the next
refresh without a restart.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from perpwatch.core import settings

ROOT = settings.ROOT
ASSETS = Path(__file__).resolve().parent / "superset"
CONFIG = Path(__file__).resolve().parent / "superset_config.py"
SUPERSET_VERSION = "6.1.0"
SERVING_DB_NAME = "perpwatch serving (read-only)"
LAKE_DB_NAME = "perpwatch lake (read-only)"
DEFAULT_PASSWORD = "perpwatch"   # local, loopback-only default; set PERPWATCH_BI_ADMIN_PASSWORD for anything else
HOST = "127.0.0.1"


def bi_venv() -> Path:
    return settings.get().bi_venv or ROOT / ".venv-bi"


def bi_home() -> Path:
    home = settings.get().bi_home
    return (home if home.is_absolute() else ROOT / home).resolve()


def serving_db() -> Path:
    # absolute, not resolve(): the snapshot is a symlink swapped by every publish (warehouse/publishing.py)
    return settings.serving_db_path().absolute()


def lake_url() -> str | None:
    """The DuckLake catalog (PERPWATCH_CATALOG) when the scale-out backend is configured."""
    return (settings.get().catalog or "").strip() or None


def lake_uri(url: str) -> str:
    """duckdb-engine URI that opens the DuckLake in `url` as the connection's database.

    libpq takes the catalog as a postgresql:// URI; the password is left out (see lake_env)."""
    u = urlparse(url)
    if u.scheme not in ("postgresql", "postgres") or not u.path.strip("/"):
        raise BIError(f"PERPWATCH_CATALOG must look like postgresql://user@host:port/dbname, got {url!r}")
    user = quote(unquote(u.username or "postgres"), safe="")
    return (f"duckdb:///ducklake:postgres:postgresql://{user}@{u.hostname or '127.0.0.1'}:{u.port or 5432}/"
            f"{u.path.strip('/')}")


def lake_env(url: str | None) -> dict[str, str]:
    password = urlparse(url).password if url else None
    return {"PGPASSWORD": unquote(password)} if password else {}


def admin_user() -> str:
    return settings.get().bi_admin_user


def admin_password() -> str:
    return settings.get().bi_admin_password.get_secret_value()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class BIError(RuntimeError):
    pass


def _bin(name: str) -> Path:
    path = bi_venv() / "bin" / name
    if not path.exists():
        raise BIError(f"{path} not found: install Superset's environment first with `make bi-install`")
    return path


def _env(home: Path, lake: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(lake_env(lake))
    env.update(SUPERSET_CONFIG_PATH=str(CONFIG), PERPWATCH_BI_HOME=str(home), FLASK_APP="superset.app:create_app()",
               SUPERSET_LOG_LEVEL="warning", PYTHONUNBUFFERED="1")
    return env


def _superset(home: Path, *args: str, log) -> None:
    proc = subprocess.run([str(_bin("superset")), *args], env=_env(home), cwd=home, stdout=log,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if proc.returncode:
        raise BIError(f"`superset {' '.join(args[:2])}` failed (exit {proc.returncode}); see {home / 'superset.log'}")


def initialise(home: Path, user: str, password: str, say=print) -> None:
    """Metadata database, roles and the admin user; the slow steps run once per Superset version."""
    home.mkdir(parents=True, exist_ok=True)
    key = home / "secret_key"
    if not key.exists():
        key.write_text(secrets.token_urlsafe(48) + "\n")
        key.chmod(0o600)
    stamp = home / f".initialised-{SUPERSET_VERSION}"
    with open(home / "superset.log", "a") as log:
        if not stamp.exists():
            say(f"initialising Superset {SUPERSET_VERSION} metadata in {home} (once, ~20 s) ...")
            _superset(home, "db", "upgrade", log=log)
            _superset(home, "init", log=log)
            _superset(home, "fab", "create-admin", "--username", user, "--firstname", "perpwatch", "--lastname",
                      "admin", "--email", f"{user}@localhost", "--password", password, log=log)
            stamp.write_text("ok\n")
        else:   # the password in the environment wins on every start
            _superset(home, "fab", "reset-password", "--username", user, "--password", password, log=log)


@dataclass
class Server:
    url: str
    home: Path
    proc: subprocess.Popen
    user: str
    password: str
    dashboards: dict[str, int] = field(default_factory=dict)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to gunicorn's master (graceful: workers finish their requests), then KILL."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def session(url: str, user: str, password: str):
    """A requests session logged in through the REST API (JWT + CSRF token), as any API client does."""
    import requests

    s = requests.Session()
    r = s.post(f"{url}/api/v1/security/login", json={"username": user, "password": password, "provider": "db",
                                                     "refresh": False}, timeout=30)
    if r.status_code != 200:
        raise BIError(f"login as {user!r} failed: HTTP {r.status_code} {r.text[:200]}")
    s.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    s.headers["Referer"] = url
    s.headers["X-CSRFToken"] = s.get(f"{url}/api/v1/security/csrf_token/", timeout=30).json()["result"]
    return s


def extension_dir(home: Path) -> Path:
    return home / "duckdb_extensions"


def _yaml_get(text: str, key: str) -> str:
    import yaml

    return yaml.safe_load(text)[key]


def bundle(serving: Path | None, lake: str | None = None, home: Path | None = None) -> bytes:
    """bi/superset/ as an import ZIP.

    The serving entry points at `serving` (absolute path) when given; with `lake` (a catalog URL)
    the lake entry is added and every dataset is bound to it, since the lake backend publishes no
    serving file (module docstring)."""
    if serving is None and lake is None:
        raise BIError("nothing to serve: no serving file and no lake catalog")
    dbs = {p.stem: p.read_text() for p in sorted((ASSETS / "databases").glob("*.yaml"))}
    lake_uuid = _yaml_get(dbs["perpwatch_lake"], "uuid")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(ASSETS.rglob("*.yaml")):
            text = path.read_text()
            if path.parent.name == "databases":
                if path.stem == "perpwatch_serving":
                    if serving is None:
                        continue
                    text = text.replace("{serving_db}", str(serving))
                elif path.stem == "perpwatch_lake":
                    if lake is None:
                        continue
                    text = text.replace("{lake_uri}", lake_uri(lake)).replace(
                        "{extension_directory}", str(extension_dir(Path(home or bi_home()))))
            elif path.parent.parent.name == "datasets" and lake is not None:
                text = text.replace(f"database_uuid: {_yaml_get(text, 'database_uuid')}", f"database_uuid: {lake_uuid}")
            zf.writestr(f"perpwatch/{path.relative_to(ASSETS)}", text)
    return buf.getvalue()


def _table_comments(serving: Path | None, lake: str | None = None) -> dict[tuple[str, str], str]:
    """Table comments of the warehouse the datasets read: the lake if configured, else the file."""
    import duckdb

    sql = ("SELECT schema_name, table_name, comment FROM duckdb_tables() WHERE comment IS NOT NULL "
           "AND database_name = current_database()")
    if lake is not None:
        from perpwatch.warehouse import lake as lk

        con = lk.connect(lake, read_only=True)
        try:
            return {(s, t): c for s, t, c in con.execute(sql).fetchall()}
        finally:
            con.close()
    with duckdb.connect(str(serving), read_only=True) as con:
        return {(s, t): c for s, t, c in con.execute(sql).fetchall()}


def install_lake_extensions(home: Path) -> dict[str, str]:
    """DuckLake + postgres extensions for Superset's DuckDB, from the registry packages (bi/lake.py)."""
    import json

    out = subprocess.run([str(_bin("python")), "-m", "bi.lake", str(extension_dir(home))], cwd=ROOT,
                         env=_env(home), capture_output=True, text=True, timeout=300)
    if out.returncode:
        raise BIError(f"installing the DuckLake extensions into {extension_dir(home)} failed: {out.stderr[-800:]}"
                      " (run `make bi-install`: bi/requirements.txt has the duckdb-extension-* packages)")
    return json.loads(out.stdout.strip().splitlines()[-1])


def import_assets(url: str, user: str, password: str, serving: Path | None, lake: str | None = None,
                  home: Path | None = None) -> dict[str, int]:
    """Import (overwrite) the bundle; sync dataset columns and descriptions from the warehouse.

    Returns dashboard slug -> id."""
    import yaml

    s = session(url, user, password)
    r = s.post(f"{url}/api/v1/assets/import/",
               files={"bundle": ("perpwatch.zip", bundle(serving, lake, home), "application/zip")},
               data={"passwords": "{}"}, timeout=300)
    if r.status_code != 200:
        raise BIError(f"dashboard import failed: HTTP {r.status_code} {r.text[:500]}")
    comments = _table_comments(serving, lake)
    db_name = LAKE_DB_NAME if lake is not None else SERVING_DB_NAME
    for path in sorted((ASSETS / "datasets").rglob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        found = s.get(f"{url}/api/v1/dataset/", params={"q": _rison_filter(spec["schema"], spec["table_name"])},
                      timeout=30).json()["result"]
        found = [d for d in found if d["database"]["database_name"] == db_name]
        if len(found) != 1:
            raise BIError(f"dataset {spec['schema']}.{spec['table_name']} on {db_name!r} not found after import")
        ds_id = found[0]["id"]
        r = s.put(f"{url}/api/v1/dataset/{ds_id}/refresh", timeout=60)   # columns + COMMENT ON descriptions
        if r.status_code != 200:
            raise BIError(f"refreshing dataset {spec['table_name']} failed: HTTP {r.status_code} {r.text[:300]}")
        desc = comments.get((spec["schema"], spec["table_name"]))
        if desc:
            r = s.put(f"{url}/api/v1/dataset/{ds_id}", json={"description": desc}, timeout=30)
            if r.status_code != 200:
                raise BIError(f"describing dataset {spec['table_name']} failed: HTTP {r.status_code} {r.text[:300]}")
    out = {}
    for path in sorted((ASSETS / "dashboards").glob("*.yaml")):
        slug = yaml.safe_load(path.read_text())["slug"]
        out[slug] = s.get(f"{url}/api/v1/dashboard/{slug}", timeout=30).json()["result"]["id"]
    return out


def _rison_filter(schema: str, table: str) -> str:
    return f"(filters:!((col:table_name,opr:eq,value:{table}),(col:schema,opr:eq,value:{schema})))"


def start(port: int | None = None, home: Path | None = None, serving: Path | None = None, user: str | None = None,
          password: str | None = None, say=print, timeout: float = 120.0, lake: str | None = None) -> Server:
    """Initialise (if needed), start gunicorn on loopback, wait until healthy, import the dashboards.

    `lake`: a DuckLake catalog URL (main() passes PERPWATCH_CATALOG) to register and bind the
    datasets to; the serving file is then optional."""
    import requests

    home = Path(home or bi_home()).resolve()
    serving = Path(serving or serving_db()).absolute()   # keep the symlink: it moves with every publish
    user, password = user or admin_user(), password or admin_password()
    if not serving.exists():
        if lake is None:
            raise BIError(f"{serving} does not exist: run `make demo` (or `perpwatch build`) first")
        serving = None
    initialise(home, user, password, say)
    if lake is not None:
        install_lake_extensions(home)
    port = port or free_port()
    url = f"http://{HOST}:{port}"
    log = open(home / "superset.log", "a")   # noqa: SIM115 - the child writes to it until it stops
    proc = subprocess.Popen(
        [str(_bin("gunicorn")), "--bind", f"{HOST}:{port}", "--workers", "1", "--threads", "8",
         "--worker-class", "gthread", "--timeout", "120", "--graceful-timeout", "10", "--no-control-socket",
         "--limit-request-line", "0", "superset.app:create_app()"],
        env=_env(home, lake), cwd=home, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)   # Ctrl-C reaches us, and we stop gunicorn in order
    log.close()
    server = Server(url, home, proc, user, password)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise BIError(f"Superset exited with {proc.returncode}; see {home / 'superset.log'}")
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise BIError(f"Superset did not answer on {url} within {timeout:.0f}s; see {home / 'superset.log'}")
            time.sleep(0.5)
        server.dashboards = import_assets(url, user, password, serving, lake, home)
        return server
    except BaseException:
        server.stop()
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="perpwatch bi", description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=settings.get().bi_port,
                    help="loopback port (default 8088, PERPWATCH_BI_PORT; 0 = any free port)")
    args = ap.parse_args(argv)

    def interrupt(_sig, _frame):
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM both stop Superset cleanly, also when started in the background (where a
    # non-interactive shell leaves SIGINT ignored).
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    lake = lake_url()
    try:
        server = start(port=args.port or None, lake=lake)
    except BIError as exc:
        print(f"perpwatch bi: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopped")
        return 130
    if lake:
        from perpwatch.warehouse.lake import redact

        print(f"\nSuperset is serving the DuckLake {redact(lake)} (read-only) at {server.url}/"
              + (f"\n  (and {serving_db()} as a second database)" if serving_db().exists() else ""))
    else:
        print(f"\nSuperset is serving {serving_db()} (read-only) at {server.url}/")
    for slug, dash_id in server.dashboards.items():
        print(f"  {server.url}/superset/dashboard/{slug}/   (id {dash_id})")
    print(f"log in as {server.user!r} (password from PERPWATCH_BI_ADMIN_PASSWORD"
          f"{', default ' + repr(DEFAULT_PASSWORD) if admin_password() == DEFAULT_PASSWORD else ''}); "
          f"Ctrl-C stops it. Log: {server.home / 'superset.log'}")
    try:
        while server.proc.poll() is None:
            time.sleep(0.5)
        print(f"Superset exited with {server.proc.returncode}; see {server.home / 'superset.log'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping Superset ...")
        server.stop()
        print("stopped")
        return 0


if __name__ == "__main__":
    sys.exit(main())
