"""Deliver marts.alerts to a webhook: final alerts once, provisional ones explicitly, changes as revisions.

    PERPWATCH_ALERT_WEBHOOK=https://hooks.example/... python -m perpwatch.serving.alerts [--db FILE]

meta.alert_deliveries is a log of what was sent, one row per message; the latest row of an alert
key (ts, asset, rule) is its delivered state: status (provisional | final | withdrawn), severity
and message. Each run compares marts.alerts (only days whose end lies at most [alerts]
delivery_max_age_hours back) with that state and sends, oldest first:

- `final`: an alert of a complete day (marts.alerts.complete) never sent as final, or whose
  severity or message differs from what was sent (a rebuild with late data: `revised` = true);
- `provisional`: an alert of an unfinished day, only when [alerts] deliver_provisional = 1,
  and again when its content changes;
- `withdrawn`: a key whose last delivery was not a withdrawal and that is no longer in
  marts.alerts, once its day is complete (or it was sent as final): the rule stopped firing.

A rebuild that reproduces the same alerts sends nothing; one that changes or drops them sends the
change. A 2xx answer appends the row; the first failure stops the run and leaves the rest for the
next one (in order, at least once). The body carries the alert's columns, `status`, `revised` and a
`text` line (Slack/Mattermost style). The webhook URL often embeds a secret: it is never logged or
stored, errors name only its host.
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
ALTER TABLE {DELIVERIES} ADD COLUMN IF NOT EXISTS status VARCHAR;
ALTER TABLE {DELIVERIES} ADD COLUMN IF NOT EXISTS severity VARCHAR;
ALTER TABLE {DELIVERIES} ADD COLUMN IF NOT EXISTS message VARCHAR;
ALTER TABLE {DELIVERIES} ADD COLUMN IF NOT EXISTS seq BIGINT;
ALTER TABLE {DELIVERIES} ADD COLUMN IF NOT EXISTS value DOUBLE;
"""
STATUSES = ("provisional", "final", "withdrawn")


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


def _deliver_provisional() -> bool:
    return bool(signal_settings()["alerts"].get("deliver_provisional", 0))


def pending(
    con: duckdb.DuckDBPyConnection,
    *,
    now: datetime | None = None,
    max_age_hours: float | None = None,
    min_severity: str = "info",
    provisional: bool | None = None,
) -> list[dict]:
    """What a delivery run would send now, oldest first: alert rows plus `status` and `revised`."""
    if min_severity not in SEVERITIES:
        raise ValueError(f"min_severity must be one of {SEVERITIES}, got {min_severity!r}")
    if not _exists(con, ALERTS):
        return []
    ensure_table(con)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if max_age_hours is None:
        max_age_hours = float(signal_settings()["alerts"]["delivery_max_age_hours"])
    if provisional is None:
        provisional = _deliver_provisional()
    allowed = list(SEVERITIES[SEVERITIES.index(min_severity) :])
    since = now - timedelta(hours=max_age_hours)
    has_complete = "complete" in [r[0] for r in con.execute(f"DESCRIBE {ALERTS}").fetchall()]
    complete = "a.complete" if has_complete else "a.ts <= ?::TIMESTAMPTZ"
    day_done = ("(SELECT bool_and(s.complete) FROM marts.daily_signals s "
                "WHERE s.date = CAST(l.ts AS DATE) - 1 AND (s.asset = l.asset OR l.asset = 'ALL'))"
                if has_complete else "NULL")
    cur = con.execute(
        f"""WITH last AS (
                SELECT * FROM {DELIVERIES}
                QUALIFY row_number() OVER (PARTITION BY ts, asset, rule
                                           ORDER BY delivered_at DESC, seq DESC NULLS LAST) = 1
            ),
            cur AS (
                SELECT a.*, {complete} AS __complete FROM {ALERTS} a
                WHERE a.ts >= ?::TIMESTAMPTZ AND list_contains(?, a.severity)
            )
            SELECT c.*, l.status AS __last_status, l.severity AS __last_severity, l.message AS __last_message,
                   l.delivered_at AS __last_at, false AS __gone
            FROM cur c LEFT JOIN last l USING (ts, asset, rule)
            UNION ALL BY NAME
            SELECT l.ts, l.asset, l.rule, l.severity, l.message, l.value, CAST(l.ts AS DATE) - 1 AS date,
                   coalesce({day_done}, l.ts <= ?::TIMESTAMPTZ) AS __complete,
                   l.status AS __last_status, l.severity AS __last_severity, l.message AS __last_message,
                   l.delivered_at AS __last_at, true AS __gone
            FROM last l
            WHERE l.ts >= ?::TIMESTAMPTZ AND coalesce(l.status, 'final') <> 'withdrawn'
              AND list_contains(?, coalesce(l.severity, 'info'))
              AND NOT EXISTS (SELECT 1 FROM {ALERTS} c WHERE c.ts = l.ts AND c.asset = l.asset AND c.rule = l.rule)
            ORDER BY ts, asset, rule""",
        ([now] if not has_complete else []) + [since, allowed, now - timedelta(hours=1), since, allowed],
    )
    cols = [d[0] for d in cur.description]
    out = []
    for row in cur.fetchall():
        a = dict(zip(cols, row, strict=True))
        last, done, gone = a.pop("__last_status"), bool(a.pop("__complete")), a.pop("__gone")
        last_sev, last_msg, last_at = a.pop("__last_severity"), a.pop("__last_message"), a.pop("__last_at")
        if last is None and last_at is not None:
            last = "final"      # logged before statuses existed: a plain (final) send
        same = last_msg is None or (last_sev, last_msg) == (a.get("severity"), a.get("message"))
        if gone:
            if last is None or (last == "provisional" and not done):
                continue        # never sent, or a provisional day still in progress: it may fire again
            a["status"] = "withdrawn"
        elif done:
            if last == "final" and same:
                continue        # already sent as it is
            a["status"] = "final"
        else:
            if not provisional or last == "final" or (last == "provisional" and same):
                continue
            a["status"] = "provisional"
        a["revised"] = last is not None
        a["complete"] = done
        out.append(a)
    return out


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
    status = alert.get("status", "final")
    tag = {"provisional": " PROVISIONAL", "withdrawn": " WITHDRAWN"}.get(status, " REVISED" if alert.get("revised") else "")
    body["text"] = f"[{alert['severity'].upper()}{tag}] {alert['message']}"
    body["source"] = "perpwatch"
    return body


def deliver(
    con: duckdb.DuckDBPyConnection,
    url: str | None = None,
    *,
    now: datetime | None = None,
    max_age_hours: float | None = None,
    min_severity: str = "info",
    provisional: bool | None = None,
    timeout: float = 10.0,
    session: requests.Session | None = None,
) -> DeliveryReport:
    """POST every pending alert to `url` (default: $PERPWATCH_ALERT_WEBHOOK); no URL = disabled."""
    url = url or settings.secret("alert_webhook")
    if not url:
        return DeliveryReport(enabled=False)
    host = urlsplit(url).netloc or "webhook"
    todo = pending(con, now=now, max_age_hours=max_age_hours, min_severity=min_severity, provisional=provisional)
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
            f"INSERT INTO {DELIVERIES} (ts, asset, rule, delivered_at, http_status, status, severity, message, "
            f"value, seq) SELECT ?, ?, ?, now(), ?, ?, ?, ?, ?, coalesce(max(seq), 0) + 1 FROM {DELIVERIES}",
            [alert["ts"], alert["asset"], alert["rule"], resp.status_code, alert["status"],
             alert["severity"], alert["message"], _jsonable(alert.get("value"))],
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
