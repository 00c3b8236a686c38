"""Deliver new rows of marts.alerts to a webhook, each alert once.

    PERPWATCH_ALERT_WEBHOOK=https://hooks.example/... python -m perpwatch.serving.alerts [--db FILE]

Each undelivered alert (no row with its (ts, asset, rule) in meta.alert_deliveries) whose
day ended at most [alerts] delivery_max_age_hours ago is POSTed as one JSON object, oldest
first; a 2xx answer records it in meta.alert_deliveries. The first failure stops the run and
leaves that alert and the later ones for the next run, so delivery is in order and at least
once (a crash between the answer and the record can repeat one alert). The body carries the
alert's columns plus a `text` line, which Slack- and Mattermost-style incoming webhooks show
as is. The webhook URL often embeds a secret: it is never logged or stored, errors name
only its host.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import duckdb
import requests

from perpwatch.core import settings
from perpwatch.core.settings import signal_settings

WEBHOOK_ENV = "PERPWATCH_ALERT_WEBHOOK"
ALERTS = "marts.alerts"
DELIVERIES = "meta.alert_deliveries"
SEVERITIES = ("info", "warning", "critical")

DDL = f"""
CREATE SCHEMA IF NOT EXISTS meta;
CREATE TABLE IF NOT EXISTS {DELIVERIES} (
    ts TIMESTAMPTZ NOT NULL, asset VARCHAR NOT NULL, rule VARCHAR NOT NULL,
    delivered_at TIMESTAMPTZ NOT NULL, http_status INTEGER
);
"""


@dataclass
class DeliveryReport:
    enabled: bool = True
    sent: int = 0
    pending: int = 0  # still undelivered after this run (left for the next one)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def ensure_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(DDL)


def _exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    schema, name = table.split(".")
    return bool(
        con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [schema, name],
        ).fetchone()[0]
    )


def pending(
    con: duckdb.DuckDBPyConnection,
    *,
    now: datetime | None = None,
    max_age_hours: float | None = None,
    min_severity: str = "info",
) -> list[dict]:
    """Undelivered alerts no older than max_age_hours (by ts, the end of their day), oldest first."""
    if min_severity not in SEVERITIES:
        raise ValueError(f"min_severity must be one of {SEVERITIES}, got {min_severity!r}")
    if not _exists(con, ALERTS):
        return []
    ensure_table(con)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if max_age_hours is None:
        max_age_hours = float(signal_settings()["alerts"]["delivery_max_age_hours"])
    allowed = list(SEVERITIES[SEVERITIES.index(min_severity) :])
    cur = con.execute(
        f"""SELECT a.* FROM {ALERTS} a
            WHERE a.ts >= ?::TIMESTAMPTZ AND list_contains(?, a.severity)
              AND NOT EXISTS (SELECT 1 FROM {DELIVERIES} d
                              WHERE d.ts = a.ts AND d.asset = a.asset AND d.rule = a.rule)
            ORDER BY a.ts, a.asset, a.rule""",
        [now - timedelta(hours=max_age_hours), allowed],
    )
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def payload(alert: dict) -> dict:
    """The JSON body for one alert: its columns plus a one-line `text`."""
    body = {k: _jsonable(v) for k, v in alert.items()}
    body["text"] = f"[{alert['severity'].upper()}] {alert['message']}"
    body["source"] = "perpwatch"
    return body


def deliver(
    con: duckdb.DuckDBPyConnection,
    url: str | None = None,
    *,
    now: datetime | None = None,
    max_age_hours: float | None = None,
    min_severity: str = "info",
    timeout: float = 10.0,
    session: requests.Session | None = None,
) -> DeliveryReport:
    """POST every pending alert to `url` (default: $PERPWATCH_ALERT_WEBHOOK); no URL = disabled."""
    url = url or settings.secret("alert_webhook")
    if not url:
        return DeliveryReport(enabled=False)
    host = urlsplit(url).netloc or "webhook"
    todo = pending(con, now=now, max_age_hours=max_age_hours, min_severity=min_severity)
    report = DeliveryReport(pending=len(todo))
    http = session or requests.Session()
    for alert in todo:
        try:
            resp = http.post(url, json=payload(alert), timeout=timeout)
        except requests.RequestException as exc:
            report.errors.append(
                f"alert webhook {host}: {type(exc).__name__} delivering {alert['rule']} "
                f"{alert['asset']} {alert['date']}"
            )
            break
        if not 200 <= resp.status_code < 300:
            report.errors.append(
                f"alert webhook {host}: HTTP {resp.status_code} delivering {alert['rule']} "
                f"{alert['asset']} {alert['date']}"
            )
            break
        con.execute(
            f"INSERT INTO {DELIVERIES} (ts, asset, rule, delivered_at, http_status) VALUES (?, ?, ?, now(), ?)",
            [alert["ts"], alert["asset"], alert["rule"], resp.status_code],
        )
        report.sent += 1
        report.pending -= 1
    return report


def main(argv: list[str] | None = None) -> int:
    from perpwatch import warehouse
    p = argparse.ArgumentParser(prog="python -m perpwatch.serving.alerts", description=__doc__.split("\n\n")[0])
    p.add_argument("--db", help="warehouse file (default $PERPWATCH_DB)")
    p.add_argument("--min-severity", choices=SEVERITIES, default="info")
    p.add_argument("--dry-run", action="store_true", help="list what would be sent, send nothing")
    args = p.parse_args(argv)
    with warehouse.session(args.db) as con:
        if args.dry_run:
            for a in pending(con, min_severity=args.min_severity):
                print(payload(a)["text"])
            return 0
        report = deliver(con, min_severity=args.min_severity)
    if not report.enabled:
        print(f"{WEBHOOK_ENV} is not set: no alerts delivered", file=sys.stderr)
        return 0
    print(f"alerts delivered: {report.sent}, still pending: {report.pending}")
    for e in report.errors:
        print(e, file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
