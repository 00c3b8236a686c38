"""prefect.yaml: every deployment loads, points at a real flow, has the schedule, pool and limit we document."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from perpwatch import deploy, sources

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def spec() -> dict:
    with open(ROOT / "prefect.yaml") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def flows(spec) -> dict[str, object]:
    """entrypoint -> the flow object, imported the way a worker does (file path : function)."""
    out = {}
    for d in spec["deployments"]:
        path, func = d["entrypoint"].split(":")
        assert (ROOT / path).is_file(), d["entrypoint"]
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        out[d["entrypoint"]] = getattr(module, func)
    return out


def by_name(spec) -> dict[str, dict]:
    """'<flow name>/<deployment name>' -> deployment, flow names read from the flow objects."""
    out = {}
    for d in spec["deployments"]:
        path, func = d["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)
        out[f"{flow.name}/{d['name']}"] = d
    return out


def test_every_entrypoint_is_a_prefect_flow(flows):
    from prefect import Flow

    assert len(flows) == 7
    for entry, fl in flows.items():
        assert isinstance(fl, Flow), entry


def test_the_documented_jobs_exist(spec):
    names = by_name(spec)
    assert sorted(names) == ["perpwatch-backfill/manual", "perpwatch-build/daily", "perpwatch-collector/liquidations",
                             "perpwatch-daily/daily", "perpwatch-ingest/hourly", "perpwatch-maintenance/maintenance",
                             "perpwatch-markets/daily"]
    sched = {n: [(s["cron"], s["timezone"]) for s in d.get("schedules") or []] for n, d in names.items()}
    assert sched == {
        "perpwatch-ingest/hourly": [("5 * * * *", "UTC")],
        "perpwatch-collector/liquidations": [("0 * * * *", "UTC")],
        "perpwatch-markets/daily": [("30 22 * * *", "America/New_York")],
        "perpwatch-build/daily": [("15 23 * * *", "America/New_York")],
        "perpwatch-daily/daily": [("15 0 * * *", "UTC")],
        "perpwatch-backfill/manual": [],
        "perpwatch-maintenance/maintenance": [("30 3 * * 0", "UTC")],
    }


def test_pool_queues_and_concurrency(spec):
    names = by_name(spec)
    for name, d in names.items():
        assert d["work_pool"]["name"] == deploy.POOL, name
        assert d["work_pool"]["work_queue_name"] in deploy.QUEUES, name
        limit = d["concurrency_limit"]
        assert limit["limit"] == 1, name
        assert limit["collision_strategy"] in ("ENQUEUE", "CANCEL_NEW"), name
        assert d["enforce_parameter_schema"] is True
    assert names["perpwatch-collector/liquidations"]["work_pool"]["work_queue_name"] == "collector"
    writers = [n for n, d in names.items() if d["work_pool"]["work_queue_name"] == "warehouse"]
    assert len(writers) == 6
    assert deploy.QUEUES["warehouse"] == 1          # one DuckDB writer process at a time
    # on the DuckLake backend the warehouse queue admits one run per worker
    assert deploy.planned_limits({}, 3)["warehouse"] == 1
    assert deploy.planned_limits({"PERPWATCH_CATALOG": "postgresql://u@h:5432/d"}, 3)["warehouse"] == 3
    assert deploy.database_url("postgresql://prefect@db:5432/prefect") == "postgresql+asyncpg://prefect@db:5432/prefect"
    assert names["perpwatch-ingest/hourly"]["concurrency_limit"]["collision_strategy"] == "CANCEL_NEW"
    assert names["perpwatch-daily/daily"]["concurrency_limit"]["collision_strategy"] == "ENQUEUE"


def test_parameters_match_the_flow_signatures(spec, flows):
    for d in spec["deployments"]:
        params = inspect.signature(flows[d["entrypoint"]].fn).parameters
        unknown = set(d.get("parameters") or {}) - set(params)
        assert not unknown, (d["entrypoint"], unknown)
        required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
        if d.get("schedules"):   # a scheduled run has nobody to supply a required parameter
            assert required <= set(d.get("parameters") or {}), d["entrypoint"]
    assert {n for n, p in inspect.signature(flows["flows/backfill.py:backfill"].fn).parameters.items()
            if p.default is inspect.Parameter.empty} == {"start"}


def test_venue_lists_name_registered_venues(spec):
    for d in spec["deployments"]:
        for venue in (d.get("parameters") or {}).get("venues") or []:
            assert venue in sources.VENUE_MODULES, (d["name"], venue)
    hourly = by_name(spec)["perpwatch-ingest/hourly"]["parameters"]["venues"]
    assert hourly == list(sources.VENUE_MODULES)


def test_working_directory_is_recorded_at_deploy_time(spec):
    (build,) = spec["build"]
    step = build["prefect.deployments.steps.run_shell_script"]
    assert step["script"] == "pwd" and step["id"] == "repo"
    (pull,) = spec["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ repo.stdout }}"


def test_backfill_chunks():
    from datetime import UTC, datetime

    from perpwatch.jobs import chunks

    got = chunks(datetime(2026, 1, 1), datetime(2026, 3, 5, tzinfo=UTC), 30)
    assert [(a.date().isoformat(), b.date().isoformat()) for a, b in got] == [
        ("2026-01-01", "2026-01-31"), ("2026-01-31", "2026-03-02"), ("2026-03-02", "2026-03-05")]
    assert got[0][0].tzinfo is UTC
    with pytest.raises(ValueError, match="empty"):
        chunks(datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC), 7)
