"""BENCHMARKS.md from the results of `python -m perpwatch.bench` (numbers only from this run)."""

from __future__ import annotations


def _s(d: dict | None, unit: str = "s", digits: int = 2) -> str:
    if not d or d.get("median") is None:
        return "n/a"
    runs = d.get("runs") or []
    if len(runs) <= 1:
        return f"{d['median']:.{digits}f} {unit}"
    return f"{d['median']:.{digits}f} {unit} ({d['min']:.{digits}f}–{d['max']:.{digits}f})"


def _n(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def _ok(b: bool | str | None) -> str:
    if isinstance(b, str):
        return b
    return "n/a" if b is None else ("**met**" if b else "**missed**")


def _fresh(f: dict | None) -> str:
    if not f:
        return ""
    out = (f"Fresh memory: writing {f['gib']:g} GiB the process has just been given took {f['first_s']:.2f} s "
           f"({f['first_sys_s']:.2f} s of it in the kernel), writing it again {f['again_s']:.2f} s, so each GiB of a "
           "build's peak memory costs about the difference once (`bench/common.py` `fresh_memory`). ")
    if "after_pause_s" in f:
        reporting = {True: "; this VM's virtio balloon reports free pages to the host (VIRTIO_BALLOON_F_REPORTING)",
                     False: "; this VM's virtio balloon does not report free pages to the host",
                     None: ""}[f.get("page_reporting")]
        out += (f"Handed back and taken again after {f['pause_s']:g} s, a fresh {f['gib']:g} GiB took "
                f"{f['after_pause_s']:.2f} s ({f['after_pause_sys_s']:.2f} s in the kernel){reporting}. ")
    return out


def _cpu(c: dict | None) -> str:
    if not c:
        return ""
    return (f"CPU: {c['model']}; single-threaded reference workloads (best of 3, `bench/common.py` `cpu_reference`): "
            f"a 5 M-step Python loop {c['python_loop_5m_s']:.2f} s, numpy sort of 10 M floats {c['numpy_sort_10m_s']:.2f} s, "
            f"a DuckDB aggregate over 20 M rows {c['duckdb_agg_20m_s']:.2f} s (the same workloads on another machine "
            "say how far its absolute figures are comparable with these). ")


def _host_speed(h: dict | None) -> str:
    """The host-speed readings (bench/common.py host_speed) as a sentence: each one, and the slowest against the
    start's, so a reader sees whether the host's speed moved while the workloads were timed."""
    if not h or "start" not in h:
        return ""
    s0 = h["start"]

    def reading(x: dict) -> str:
        return f"{x['python_loop_5m_s']:.2f} / {x['duckdb_agg_20m_s']:.2f} s"

    def factor(x: dict) -> float:
        return max(x[k] / s0[k] for k in ("python_loop_5m_s", "duckdb_agg_20m_s"))

    after = [(k, x) for k, x in h.items() if k != "start"]
    text = (f"Host speed (`bench/common.py` `host_speed`: medians of 5 of the Python loop / the DuckDB aggregate above) "
            f"at start {reading(s0)}" + "".join(f", after {k} {reading(x)}" for k, x in after))
    if after:
        k, x = max(after, key=lambda kx: factor(kx[1]))
        text += f"; the slowest reading, after {k}, is {factor(x):.2f}x the start's"
    return text + ". "


def span(d: dict) -> tuple[float, float]:
    """(min, max) of a Sample.as_dict(): the run-to-run spread the report judges against."""
    return float(d["min"]), float(d["max"])


def ratio_span(num: dict, den: dict) -> tuple[float, float]:
    """The ends of num/den over both spreads: (num's min / den's max, num's max / den's min)."""
    return span(num)[0] / span(den)[1], span(num)[1] / span(den)[0]


def judge(a: float, b: float, target: float, higher_is_better: bool = True) -> str:
    """Judge a target against the spread of the runs, not a typed-in band: a and b are the measure's
    values at the two ends of that spread (the best and the worst run, in either order). **met** when
    even the worst run clears the target, **missed** when even the best run falls short, otherwise
    **within the spread** (inconclusive on this run)."""
    lo, hi = min(a, b), max(a, b)
    worst, best = (lo, hi) if higher_is_better else (hi, lo)
    clears = (lambda v: v >= target) if higher_is_better else (lambda v: v <= target)
    if clears(worst):
        return "**met**"
    if not clears(best):
        return "**missed**"
    return f"**within the spread** (the runs range {lo:.3g}–{hi:.3g} across the target {target:g})"


def render(r: dict) -> str:
    m = r["machine"]
    v = m["versions"]
    out: list[str] = []
    w = out.append
    w("# perpwatch benchmarks\n")
    w(f"Produced by `make bench`, i.e. `{r['command'].strip()}` (`--size {r['size']}`), started {r['started'][:19]} UTC, "
      f"{r['total_s'] / 60:.1f} min of benchmarks"
      + ("; " + ", ".join(f"the {w} section is from the run started {t[:19]} UTC" for w, t in r["from_earlier_run"].items())
         if r.get("from_earlier_run") else "") + ". Numbers are medians with (min–max) over the runs stated; every baseline ran in the "
      "same invocation as the contender. Raw numbers: `data/bench/results-" + r["size"] + ".json`.\n")
    w(f"Machine: {m['cores']} cores, {m['memory']} RAM, {m['platform']}; Python {v['python']}, DuckDB {v['duckdb']}, "
      f"Polars {v['polars']}, PyArrow {v['pyarrow']}, Prefect {v['prefect']}, Great Expectations {v['great_expectations']}, "
      f"orjson {v['orjson']}. " + _cpu(m.get("cpu")) + _fresh(m.get("fresh_memory")) + f"Load average at start {m['loadavg']}; "
      + ", ".join(f"after {k}: {x}" for k, x in (r.get("loadavg_after") or {}).items())
      + ". " + _host_speed(r.get("host_speed")) + "A target is judged against the spread of its own runs in this invocation: **met** when the worst "
      "run clears it (for a ratio: the contender's worst run against the baseline's best), **missed** when even "
      "the best run falls short, otherwise **within the spread**.\n")
    targets: list[tuple[str, str, bool | None]] = []
    sections: list[str] = []

    if "load" in r:
        s = r["load"]["summary"]
        raw = r["load"]["raw"]
        rows = raw["rows"]
        pf, pv = s["pipeline_novalidation.fresh"], s["pipeline_validated.fresh"]
        ceil = s["ceiling"]
        sec = [f"## 1. Load path: {rows:,} open-interest rows, {raw['pages']:,} Binance `openInterestHist` pages of 500 "
               f"({raw['payload_mb']:.0f} MB JSON)\n",
               "Pages as the venue returns them (numbers as strings, integer timestamps) go through the real code: "
               "`pipeline.parse_all` (the batch parser a run uses: all pages of the endpoint in one call, "
               "`sources.binance.PARSERS[...].batch`), then "
               "`pipeline.load_table` (GX validation via "
               "`perpwatch.ingest.validate.validate`, quarantine, `warehouse.upsert` with the watermarks in one transaction) "
               "into a fresh file-backed warehouse (**fresh**), then the same pages again (**reload**: every row a "
               "duplicate, nothing changes). Stage columns are medians of the fresh load: `parse_all`, then "
               "`load_table`'s wall time, inside which GX validates on the calling thread while `warehouse.upsert` "
               "writes the same batch on a worker thread, committed only once validation passed "
               "(`pipeline._Speculative`), so the two columns after it overlap.\n",
               "| path | fresh | rows/s | reload | parse | load_table | GX validate (in it) | upsert (in it, concurrent) |",
               "|---|---|---|---|---|---|---|---|"]
        for key, label in (("pipeline_novalidation", "perpwatch, no validation"),
                           ("pipeline_validated", "perpwatch, GX validation")):
            f, rl = s[f"{key}.fresh"], s[f"{key}.reload"]
            sec.append(f"| {label} | {_s(f['total'])} | {_n(f['rows_per_s'])} | {_s(rl['total'])} | {f['parse']:.2f} s | "
                       f"{f['load']:.2f} s | {f['validate']:.2f} s | {f['upsert']:.2f} s |")
        sec.append(f"| DuckDB ingest of the normalised rows from Arrow, in row-group slices as `warehouse.arrow` hands them over (ceiling) | {_s(ceil['total'])} | {_n(ceil['rows_per_s'])} | – | – | – | – | – |")
        em = s["executemany"]
        sec.append(f"| row-at-a-time `executemany` INSERT OR REPLACE, PK on the grain ({em['rows']:,}-row sample) | "
                   f"{_s(em['fresh'])} | {_n(em['rows_per_s'])} | {_s(em['reload'])} | – | – | – | – |")
        d = s.get("dlt")
        if d and "routes" in d:
            for route, by_size in d["routes"].items():
                for n, x in sorted(by_size.items(), key=lambda kv: int(kv[0])):
                    sec.append(f"| dlt {d['version']} DuckDB, `merge` on the grain, {route} route ({int(n):,} rows; "
                               f"setup {_s(x['setup'])} not included) | {_s(x['fresh'])} | {_n(x['rows_per_s'])} | "
                               f"{_s(x['reload'])} | – | – | – | – |")
        elif d:
            sec.append(f"| dlt | failed: {d.get('error', '?')[:200]} | | | | | | |")
        else:
            sec.append("| dlt | not run at this size (`--dlt` to force) | | | | | | |")
        gx = raw.get("gx_alone")
        gx_in = pv["validate"]
        sec.append("")
        sec.append(f"Loads: fresh {pf['loaded']:,} loaded / {pf['duplicate']:,} duplicate / {pf['quarantined']:,} "
                   f"quarantined; reload {s['pipeline_novalidation.reload']['loaded']:,} loaded / "
                   f"{s['pipeline_novalidation.reload']['duplicate']:,} duplicate."
                   + (f" Diagnostic: the same GX suite on the same {rows:,} rows with nothing else running takes "
                      f"{_s(gx)}; inside `load_table` it takes {gx_in:.2f} s (median), sharing the two cores "
                      "with the upsert." if gx else "")
                   + (" Before the timed rounds one untimed round of both variants (the process's first "
                      f"{rows:,}-row loads: " + ", ".join(f"{'validated' if k == 'pipeline_validated' else 'no validation'} "
                                            f"{v:.2f} s" for k, v in raw["warmup"].items())
                      + "; the cold path is section 4's)." if raw.get("warmup") else "") + "\n")
        sections.append("\n".join(sec))
        best = pf["total"]["median"]
        best_v = pv["total"]["median"]
        if d and "routes" in d:
            for route, goal in (("dict", 50), ("arrow", 3)):
                if route not in d["routes"]:
                    continue
                by_size = d["routes"][route]
                n_big = max(by_size, key=int)
                x = by_size[n_big]
                trend = ", ".join(f"{_n(v['rows_per_s'])} rows/s at {int(k):,}" for k, v in
                                  sorted(by_size.items(), key=lambda kv: int(kv[0])))
                same = " (same rows)" if int(n_big) == rows else f" (dlt on {int(n_big):,} rows)"
                pv_lo, pv_hi = span(pv["total"])
                d_lo, d_hi = span(x["fresh"])
                n_dlt = int(n_big)
                targets.append((f"1 Load: ≥ {goal}× dlt's {route} route (rows/s, fresh, with GX validation)",
                                f"{rows / best_v / x['rows_per_s']:.1f}×{same}; dlt {trend}",
                                judge((rows / pv_lo) / (n_dlt / d_hi), (rows / pv_hi) / (n_dlt / d_lo), goal)))
        targets.append(("1 Load: ≥ 1 M rows/s with GX validation (fresh)",
                        f"{_n(rows / best_v)} rows/s validated, {_n(rows / best)} without; "
                        f"reload {_n(s['pipeline_novalidation.reload']['rows_per_s'])}",
                        judge(rows / span(pv["total"])[0], rows / span(pv["total"])[1], 1e6)))
        # GX overlaps the upsert, so its cost is what it adds to the wall: each validated run against the
        # no-validation run of the same round (the two variants alternate, one pair per round)
        shares = [v["fresh"]["total"] / n["fresh"]["total"] - 1 for v, n in
                  zip(raw["variants"]["pipeline_validated"], raw["variants"]["pipeline_novalidation"], strict=True)]
        share = sorted(shares)[len(shares) // 2]
        targets.append(("1 Load: validation adds ≤ 20 %",
                        f"{share * 100:+.0f} % (validated vs no-validation wall, per round "
                        + ", ".join(f"{x * 100:+.0f} %" for x in shares) + f"; GX itself {pv['validate']:.2f} s, "
                        f"concurrent with the upsert; the no-validation variant {best:.2f} s)",
                        judge(1 + min(shares), 1 + max(shares), 1.20, higher_is_better=False)))
        ratio = best_v / ceil["total"]["median"]
        targets.append(("1 Load: within 2× of DuckDB's Arrow ingest (validated path)",
                        f"{ratio:.1f}× ({best_v:.2f} s vs {ceil['total']['median']:.2f} s); upsert alone "
                        f"{pf['upsert'] / ceil['total']['median']:.1f}×",
                        judge(*ratio_span(pv["total"], ceil["total"]), 2.0, higher_is_better=False)))
        tot = pv["total"]["median"]
        sections.append(f"Where the validated fresh load's {tot:.2f} s go: parse {pv['parse']:.2f} s "
                        f"({pv['parse'] / tot * 100:.0f} %), `load_table` {pv['load']:.2f} s "
                        f"({pv['load'] / tot * 100:.0f} %), inside which GX validation ({pv['validate']:.2f} s) and "
                        f"`warehouse.upsert` ({pv['upsert']:.2f} s) run at the same time; the Arrow ingest alone "
                        f"(the ceiling row) takes {ceil['total']['median']:.2f} s, "
                        f"{ceil['total']['median'] / tot * 100:.0f} % of the whole.\n")

    if "marts" in r:
        mm = r["marts"]
        sizes = sorted(mm["sizes"], key=lambda k: int(k))
        full = sizes[-1]
        limit = 20.0 if mm["skip"] else 45.0   # issue 16: every mart including the heatmap < 45 s
        sec = [f"## 2. Marts at scale: {mm['days']} days × up to {full} assets × 5 venues, hourly\n",
               "Staging generated with DuckDB SQL (`bench/gen_warehouse.py`: range + hash noise, random-walk prices) "
               "straight into the warehouse schema; the smaller sizes are the first N assets cut from the full one. "
               f"DuckDB `memory_limit={mm['duckdb']['memory_limit']}`, `threads={mm['duckdb']['threads']}` (half the "
               "RAM, both cores; the build runs alone in a fresh process so its peak RSS is its own). "
               + ("`transforms.build_all` rebuilds every mart in dependency order, "
                  + (f"{mm['build_workers']} at a time, each on its own connection once the marts it reads are "
                     "committed (`PERPWATCH_BUILD_WORKERS`)" if mm.get("build_workers", 1) > 1 else "one at a time")
                  + ".\n")]
        if mm["skip"]:
            hm = mm["heatmap"]
            sec.append(f"**Not in these timings: {', '.join(mm['skip'])}.** The liquidation heatmap is a Python fold "
                       f"over every asset-hour: {hm['days']} days × {hm['assets']} assets ({hm['asset_hours']:,} "
                       f"asset-hours) take {_s(hm['seconds'])} and write {hm['rows'] or 0:,} rows, so the full size "
                       f"would take ~{hm['extrapolated_full_s'] / 3600:.1f} h and ~{hm['extrapolated_full_rows'] / 1e9:.1f} "
                       "billion rows. For the timings below the two tables are replaced by empty stand-ins of the "
                       "right schema (daily_signals joins the clusters).\n")
        if mm.get("rss_method") != "own":
            sec.append("**Peak RSS caveat for this section:** measured with `wait4` on a child forked from the bench "
                       "process, which on Linux starts from the parent's high-water mark (the load workload's ~7 GB), "
                       "so these peak RSS figures are upper bounds, not the builds' own; the harness now launches "
                       "children through a small launcher (bench/common.py) and later runs report their own peak.\n")
        sec += ["| size | staging rows | full rebuild | peak RSS | heaviest marts (median s) |", "|---|---|---|---|---|"]
        base = mm["sizes"][sizes[0]]["total"]["median"]
        for k in sizes:
            z = mm["sizes"][k]
            top = sorted(z["per_mart"].items(), key=lambda kv: -kv[1]["median"])[:4]
            mult = int(k) / int(sizes[0])
            sec.append(f"| {mult:.0f}× = {k} assets | {z['staging_rows'] / 1e6:.1f} M | {_s(z['total'])} "
                       f"(×{z['total']['median'] / base:.2f}) | {_s(z['peak_rss_mb'], 'MB', 0)} | "
                       + ", ".join(f"{n.split('.')[1]} {x['median']:.1f}" for n, x in top) + " |")
        st = mm["sizes"][full].get("heatmap_stages") or {}
        if st:
            hm_total = mm["sizes"][full]["per_mart"].get("marts.liquidation_heatmap", {}).get("median")
            names = {"bars": "hourly bars from staging (`load_bars`: DuckDB scans + numpy grids)",
                     "fold": "the fold (births, death hours, OI scaling; `heatmap_core.fold`)",
                     "snapshots": "binned snapshots (`heatmap_core.snapshots`)",
                     "rows": "rows frame and end-of-day state", "state": "storing the state (meta.heatmap_levels)"}
            parts = [f"{names.get(k, k)} {x['median']:.1f} s" for k, x in st.items()]
            rest = hm_total - sum(x["median"] for x in st.values()) if hm_total else None
            sec.append(f"\nInside marts.liquidation_heatmap at {full} assets (medians of the same runs): " + "; ".join(parts)
                       + (f"; the other {rest:.1f} s of its {hm_total:.1f} s are writing the table." if rest is not None else ".")
                       + "\n")
        chain = _longest_chain(mm.get("graph"), mm["sizes"][full]["per_mart"])
        if chain:
            names_, secs = chain
            together = mm.get("build_workers", 1) > 1
            sec.append(f"Longest dependency chain at {full} assets (per-mart medians along `transforms.order`'s graph; "
                       "a mart starts when the marts it reads are built"
                       + (", and these medians were measured with other marts building beside them"
                          if together else ", so no build order or parallelism finishes sooner")
                       + f"): {' → '.join(n.split('.')[1] for n in names_)}, {secs:.1f} s of the "
                       f"{mm['sizes'][full]['total']['median']:.1f} s.\n")
        zf = mm["sizes"][full]
        if zf.get("cpu_s"):
            cores = (r.get("machine") or {}).get("cores") or 2
            cpu_med = zf["cpu_s"]["median"]
            sec.append(f"CPU of the build at {full} assets (user + system, every core, median): {cpu_med:.0f} CPU-s, "
                       f"of which system {zf['sys_s']['median']:.0f}; on {cores} cores no schedule of this work finishes "
                       f"under {cpu_med / cores:.1f} s"
                       + (f", above the {limit:.0f} s target: the work itself, not its order, has to shrink"
                          if cpu_med / cores > limit else "") + ".\n")
        gen = mm["generation"].get(full) or mm["generation"].get(int(full)) or {}
        sec.append(f"\nGenerating the full staging took {gen.get('_seconds', 0):.0f} s"
                   f"{' (reused from an earlier run)' if gen.get('_reused') else ''}.\n")
        if mm.get("diagnostics"):
            sec.append("Where the rebuild time goes (same warehouse, read-only, same DuckDB settings):\n")
            sec.append("| query | seconds |")
            sec.append("|---|---|")
            for q, t in mm["diagnostics"].items():
                sec.append(f"| {q} | {t:.2f} |")
            sec.append("")
        inc = mm["incremental"]
        wh = inc["with_headers"]
        heads = [n for n, p in inc["as_is"]["plan"].items() if p.get("mode") == "incremental"]
        sec.append(f"**Daily incremental pass** (one more day landed in every staging table, then "
                   f"`transforms.build_incremental(con, since={inc['since']})`; marts with an incremental header "
                   f"in this checkout: {', '.join(heads) or 'none'}): first pass {inc['as_is']['total_s']:.1f} s, "
                   f"then {_s(wh['total'])} over the repeated runs, peak RSS {_s(wh['peak_rss_mb'], 'MB', 0)}:\n")
        sec.append("| mart | mode | seconds |")
        sec.append("|---|---|---|")
        for n, x in sorted(wh["per_mart"].items(), key=lambda kv: -kv[1]["median"]):
            p = wh["plan"].get(n, {})
            mode = p.get("mode", "?") + (f" (lookback {p['lookback']} d)" if p.get("mode") == "incremental" and p.get("lookback") else "")
            if p.get("mode") == "full":
                mode += f" — {p.get('reason')}"
            sec.append(f"| {n} | {mode} | {x['median']:.2f} |")
        ist = wh.get("heatmap_stages") or {}
        if ist:
            names = {"bars": "the new hours' bars (`load_bars` from the state's day)",
                     "levels": "stored levels the new hours can reach (`load_levels`)",
                     "fold": "the fold", "snapshots": "binned snapshots",
                     "write": "replacing the mart's rows from the resumed day",
                     "thin": "thinning days that left the hourly window",
                     "state": "storing what the fold changed (`save_changes`)"}
            sec.append("\nThe heatmap's share of the pass by stage (medians): "
                       + ", ".join(f"{names.get(k, k)} {x['median']:.2f} s" for k, x in ist.items()) + ".")
        sections.append("\n".join(sec))
        z = mm["sizes"][full]
        targets.append((f"2 Marts: full rebuild < {limit:.0f} s at {full} assets × {mm['days']} d"
                        + (" (heatmap marts excluded, see §2)" if mm["skip"] else " (every mart incl. the heatmap)"),
                        f"{_s(z['total'])}; peak RSS {_s(z['peak_rss_mb'], 'MB', 0)}",
                        judge(*span(z["total"]), limit, higher_is_better=False)))
        if len(sizes) >= 3:
            r2 = mm["sizes"][sizes[1]]["total"]["median"] / base
            r4 = mm["sizes"][sizes[2]]["total"]["median"] / base
            # linear: time per asset at 4x no more than 1.2x the 1x one (r4 <= 4.8); judged on the spread
            targets.append(("2 Marts: 1×/2×/4× linear (4× within 4.8× of 1×)",
                            f"×{r2:.2f} at 2×, ×{r4:.2f} at 4× (base {sizes[0]} assets, {base:.1f} s)",
                            judge(*ratio_span(mm["sizes"][sizes[2]]["total"], mm["sizes"][sizes[0]]["total"]), 4.8, higher_is_better=False)))
        targets.append(("2 Marts: daily incremental < 2 s", f"{_s(wh['total'])}; first pass "
                        f"{inc['as_is']['total_s']:.1f} s", judge(*span(wh["total"]), 2.0, higher_is_better=False)))

    if "publish" in r:
        pb = r["publish"]
        one, four = pb["1x"], pb["4x"]
        ratio = four["incremental"]["median"] / one["incremental"]["median"]
        sec = ["## Publish what changed\n",
               "After a daily incremental build (one more day landed), `warehouse.publish` brings the other serving "
               "copy up to date in place (changed marts from their first changed day, staging rows loaded since) "
               "and rewrites the exports' changed months (`<exports>/<mart>/year=YYYY/month=MM/data.parquet`, warehouse/publishing.py).\n",
               "| history | first publish (everything) | publish after a daily build | serving file |",
               "|---|---|---|---|"]
        for k, x in (("1×", one), ("4×", four)):
            sec.append(f"| {k} = {x['days']} d × {x['assets']} assets | {x['full_s']:.2f} s | {_s(x['incremental'])} "
                       f"({', '.join(sorted(set(x['modes'])))}) | {x['serving_bytes'] / 1e6:.0f} MB |")
        sections.append("\n".join(sec))
        targets.append(("Publish: 4× history within 1.3× of 1× (after a daily build)",
                        f"×{ratio:.2f} ({_s(four['incremental'])} vs {_s(one['incremental'])})",
                        judge(*ratio_span(four["incremental"], one["incremental"]), 1.3, higher_is_better=False)))

    if "extract" in r:
        e = r["extract"]
        fl = e["floor"]
        pw = e["perpwatch"][-1]
        sq = e["sequential"][-1]
        sec = [f"## 3. Extraction: 30-day backfill, {e['instruments']} Binance instruments × 4 datasets\n",
               f"Simulator with Binance's limit shapes, {e['latency_ms']:.0f} ms latency per request, "
               f"`limits_scale={e['limits_scale']}` (capacities) and `window_scale={e['window_scale']}` (windows: 5 min → "
               f"{300 * e['window_scale']:.0f} s), the client's budget windows scaled the same way: the ratios "
               "hold, the run is short. Datasets: open interest, global long/short accounts, funding, perp klines "
               "(1 h). Each contender gets a fresh simulator (same pre-generated market).\n",
               "| contender | wall | requests | 429 | 418 |", "|---|---|---|---|---|",
               f"| perpwatch (`pipeline.refresh_instruments` + `plan_units` + `extract_unit` on 4 threads, budgets, raw landing) | "
               f"{_s(e['perpwatch_wall'])} | {pw['requests']} | {sum(x['429'] for x in e['perpwatch'])} | {sum(x['418'] for x in e['perpwatch'])} |",
               f"| sequential `requests` loop, sleep Retry-After on 429 (ccxt-style) | {_s(e['sequential_wall'])} | "
               f"{sq['requests']} | {sum(x['429'] for x in e['sequential'])} | {sum(x['418'] for x in e['sequential'])} |",
               "",
               "Floor the limits allow (cost ÷ allowed rate per bucket, the simulator's capacities): "
               + ", ".join(f"{b} {fl['used'][b]:.0f} → {t:.1f} s" for b, t in fl["rate_floor_s"].items())
               + f"; latency floor (busiest unit's pages back to back) {fl['latency_floor_s']:.1f} s. "
               f"**Floor = {fl['floor_s']:.1f} s ({fl['binding']})**. The server's windows are fixed and wall-clock "
               "aligned, so a client can burst across a window edge and land slightly under this steady-rate floor.\n"]
        sections.append("\n".join(sec))
        ratio = e["perpwatch_wall"]["median"] / fl["floor_s"]
        n429 = sum(x["429"] for x in e["perpwatch"])
        n418 = sum(x["418"] for x in e["perpwatch"])
        targets.append(("3 Extraction: wall ≤ 1.1× floor", f"{ratio:.2f}× ({e['perpwatch_wall']['median']:.1f} s vs "
                        f"{fl['floor_s']:.1f} s); sequential loop {e['sequential_wall']['median'] / fl['floor_s']:.2f}×",
                        judge(span(e["perpwatch_wall"])[0] / fl["floor_s"], span(e["perpwatch_wall"])[1] / fl["floor_s"],
                              1.1, higher_is_better=False)))
        targets.append(("3 Extraction: zero 429 and zero 418", f"429: {n429}, 418: {n418} over {len(e['perpwatch'])} runs",
                        n429 == 0 and n418 == 0))

    if "e2e" in r:
        x = r["e2e"]
        sec = ["## 4. End to end\n"]
        if x.get("demo"):
            from perpwatch.bench.common import Sample as _Sample

            ok = [d for d in x["demo"] if d["ok"]]
            failed = [d for d in x["demo"] if not d["ok"]]
            wall = _Sample([d["wall_s"] for d in ok]).as_dict() if ok else None
            rss = _Sample([d["peak_rss_mb"] for d in ok]).as_dict() if ok else None
            sec.append(f"`python -m perpwatch.demo` (what `make demo` runs after install; simulator, 30-day backfill of "
                       f"BTC/ETH/SOL through the Prefect flows, marts, publish), fresh warehouse and fresh PREFECT_HOME "
                       f"each run, {len(ok)} of {len(x['demo'])} runs succeeded"
                       + (f": **{_s(wall)}**, peak RSS **{_s(rss, 'MB', 0)}** (successful runs)" if ok else "")
                       + ".\n")
            for d in failed:   # a failed run is not a sample: it says what broke
                last = [ln for ln in d.get("tail", "").splitlines() if ln.strip()][-1:] or ["(no output)"]
                sec.append(f"- a run **failed** after {d['wall_s']:.1f} s: `{last[0].strip()[:160]}`\n")
            why = f" — {len(failed)} of {len(x['demo'])} runs failed" if failed else ""
            targets.append(("4 E2E: demo pipeline < 60 s", (_s(wall) if ok else "no successful run") + why,
                            judge(*span(wall), 60, higher_is_better=False) if ok and not failed else False))
            targets.append(("4 E2E: demo peak RSS < 1 GB", (_s(rss, "MB", 0) if ok else "no successful run") + why,
                            judge(*span(rss), 1024, higher_is_better=False) if ok and not failed else False))
        from perpwatch.bench.common import Sample

        pr, gx = x["prefect"], x["gx"]
        S = lambda rows, k: Sample([q[k] for q in rows]).as_dict()  # noqa: E731
        sec.append("| start-up cost (fresh process) | median (min–max) |")
        sec.append("|---|---|")
        sec.append(f"| `import prefect` | {_s(S(pr, 'import_s'))} |")
        sec.append(f"| first flow run, fresh PREFECT_HOME (DB migrations) | {_s(S(pr, 'first_flow_s'))} |")
        sec.append(f"| second flow run, same process | {_s(S(pr, 'second_flow_s'))} |")
        sec.append(f"| `import great_expectations` | {_s(S(gx, 'import_s'))} |")
        sec.append(f"| `gx.get_context(mode='ephemeral')` | {_s(S(gx, 'context_s'))} |")
        sec.append(f"| first `perpwatch.ingest.validate.validate` (suite load + 1 k rows) | {_s(S(gx, 'first_validate_1k_s'))} |")
        sections.append("\n".join(sec))

    if "lake" in r:
        lk = r["lake"]
        ing, pub, ld = lk["ingest"], lk["publish"], lk["load"]
        fl = ing.get("rate_floor") or {}
        bound = f"; one-host floor {ing['ratio_floor']:.2f}× (OKX rate limit)" if fl.get("floor_s") else ""
        targets.append(("5 Scale out: 3 workers into the lake ≤ 0.45× one process into the file (wall)",
                        f"{ing['ratio']:.2f}× ({_s(ing['lake'])} vs {_s(ing['file'])}){bound}",
                        judge(*ratio_span(ing["lake"], ing["file"]), 0.45, higher_is_better=False)))
        targets.append(("5 Scale out: lake reader wait flat from 1× to 4× (≤ 1.2×)",
                        f"×{pub['lake_growth']:.2f} (file publish ×{pub['file_growth']:.2f})",
                        judge(*ratio_span(pub["4x"]["lake_reader_wait"], pub["1x"]["lake_reader_wait"]), 1.2, higher_is_better=False)))
        sec = ["## 5. Scale out: DuckLake on PostgreSQL vs the DuckDB file (`bench/lake.py`)\n",
               f"**(a) Concurrent ingest.** `perpwatch backfill --no-prefect --no-build` of {ing['days']} days, "
               f"{', '.join(ing['assets'])}, all six derivatives venues against the simulator with its real per-venue "
               f"limits and {ing['latency_ms']:.0f} ms latency per request. One process into the file: {_s(ing['file'])}; "
               f"three worker processes at once into the lake (two venues each): {_s(ing['lake'])} → "
               f"**{ing['ratio']:.2f}×**. Open-interest + funding rows: {ing['oi_funding_rows']}.\n",
               *_ingest_why(ing),
               "**(b) What a BI reader waits for after a build**, generated staging (bench/gen_warehouse.py). "
               "File: `warehouse.publish` rewrites `serving.duckdb` whole. Lake: attach the latest snapshot read-only "
               "and run a query — no copy.\n",
               "| size | staging rows | file: publish (serving copy) | serving.duckdb | lake: reader wait |",
               "|---|---|---|---|---|"]
        for k in ("1x", "4x"):
            x = pub[k]
            sec.append(f"| {k} = {x['assets']} assets | {x['staging_rows']:,} | {_s(x['file_publish'])} | "
                       f"{x['serving_mb']:.0f} MB | {_s(x['lake_reader_wait'])} |")
        sec.append(f"\nGrowth 1× → 4×: file ×{pub['file_growth']:.2f}, lake ×{pub['lake_growth']:.2f}.\n")
        sec.append(f"**(c) Load rate**, the same {ld['rows']:,} openInterestHist rows through `pipeline.load_table` "
                   f"(GX, upsert, watermarks), fresh warehouse: file {_n(ld['file']['rows_per_s'])} rows/s "
                   f"({_s(ld['file']['seconds'])}), lake {_n(ld['lake']['rows_per_s'])} rows/s ({_s(ld['lake']['seconds'])}) "
                   f"= {ld['lake_vs_file']:.2f}× the file.\n")
        sections.append("\n".join(sec))

    w("## Targets\n")
    w("| target | measured | |")
    w("|---|---|---|")
    for t, meas, ok in targets:
        w(f"| {t} | {meas} | {_ok(ok)} |")
    w("")
    out.extend(s.rstrip("\n") + "\n" for s in sections)   # a blank line after each section
    out.append(NOTES)
    return "\n".join(out) + "\n"


def _ingest_why(ing: dict) -> list[str]:
    """What bounds (a): per-worker walls, the OKX worker alone, OKX's rate-limit floor, CPU — from the run."""
    if "workers" not in ing:
        return []
    out = []
    per = ing["workers"][-1] if ing["workers"] else []
    if per:
        out.append("Each worker's wall in the three-worker run: " + ", ".join(
            f"{'+'.join(v)} {w:.1f} s" for v, w in zip(ing["split"], per, strict=True))
            + f"; the worker with OKX alone on a fresh lake (nothing else running): {_s(ing['okx_worker_alone'])} "
            f"= {ing['ratio_alone']:.2f}× the file. CPU used (user + system): file {_s(ing['cpu_s']['file'], 'CPU-s', 0)}, "
            f"lake {_s(ing['cpu_s']['lake'], 'CPU-s', 0)} on {ing['cores']} cores. Lake commits (DuckLake snapshots) in "
            f"the three-worker run: {ing.get('lake_commits', {}).get('snapshots', '?')} for "
            f"{ing.get('lake_commits', {}).get('payloads', '?')} landed payloads (raw landing commits in batches).\n")
    fl = ing.get("rate_floor") or {}
    file_s = ing["file"]["median"]
    cpu_floor = ing["cpu_s"]["lake"]["median"] / ing["cores"] if ing["cpu_s"]["lake"].get("median") else 0.0
    if ing["ratio"] > 0.45 and cpu_floor / file_s > 0.45:
        out.append(f"**CPU-bound.** The three workers used {ing['cpu_s']['lake']['median']:.0f} CPU-s; on "
                   f"{ing['cores']} cores that alone needs ≥ {cpu_floor:.0f} s of wall = {cpu_floor / file_s:.2f}× the "
                   "file run, before any waiting (each worker pays its own Python, Great Expectations and DuckLake "
                   "start-up; other processes on the machine share the cores too).\n")
    if fl.get("floor_s") and ing["ratio"] > 0.45:
        head = ("Why ≤ 0.45 is out of reach on one host." if ing["ratio_floor"] > 0.45
                else "The rate-limit floor.")
        out.append(
            f"**{head}** OKX's `{fl['endpoint']}` allows {fl['capacity'] / 0.8:.0f} requests per "
            f"{fl['window_s']:.0f} s per IP; the client uses {fl['capacity']:.0f} of them (80 %, sources/okx.py); this backfill needs {fl['requests']} of them, so whichever process fetches them "
            f"spends at least (⌈{fl['requests']}/{fl['capacity']:.0f}⌉ − 1) × {fl['window_s']:.0f} s = "
            f"**{fl['floor_s']:.0f} s** on that endpoint alone. One process already extracts every venue's units "
            "concurrently (8 threads, a budget per endpoint), so the file run is that floor plus start-up, "
            "planning and one load; three workers on one host share the one IP budget and can only take the other "
            "venues' parse/validate/load off the critical path, while each pays its own Python, Great Expectations "
            f"and DuckLake start-up on the same cores. Floor / file = **{ing['ratio_floor']:.2f}×** even with zero "
            "overhead; the OKX worker alone measures the split's real best. Workers on hosts with their own IPs can "
            "split OKX's instruments (`--assets`) and go under it (docs/scale-out.md).\n")
    return out


def _longest_chain(graph: dict | None, per_mart: dict) -> tuple[list[str], float] | None:
    """The dependency chain with the most seconds (median per mart): graph maps a mart to the marts it reads."""
    if not graph:
        return None
    secs = {n: x["median"] for n, x in per_mart.items()}
    best: dict[str, tuple[float, list[str]]] = {}

    def longest(n: str) -> tuple[float, list[str]]:
        if n not in best:
            ups = [longest(u) for u in graph.get(n, []) if u in graph]
            up = max(ups, key=lambda x: x[0]) if ups else (0.0, [])
            best[n] = (up[0] + secs.get(n, 0.0), up[1] + [n])
        return best[n]

    total, names = max((longest(n) for n in graph), key=lambda x: x[0])
    return names, total


NOTES = """## Why the misses miss, what closed the others, and what would close the rest

- **Load path.** The parse column is the batch parser the pipeline runs (one call per endpoint
  for all pages: polars' JSON reader per page straight into the venue's asserted row shape, orjson
  only for pages of another shape, vectorised casts); the upsert column is `warehouse.upsert` (Arrow
  ingest plus the duplicate check and the classifying join); `load_table` is the whole load (concat,
  in-run dedup on the grain — one row hash proves a batch has no repeated key before the
  order-keeping unique is paid for —, GX, the upsert with the watermarks, quarantine bookkeeping).
  `load_table` starts the upsert on a worker thread inside a transaction that commits only when
  the batch passed validation (a failed batch is rolled back and its good rows written the usual
  way), so GX and the insert run at the same time; the two columns overlap. `warehouse.arrow` hands DuckDB the batch in slices of one row group (122,880
  rows), so DuckDB can insert the slices in parallel; the Arrow-ingest row gets the same slices and
  is the floor under the upsert column.
- **dlt.** Two routes of dlt 1.x `merge` on the grain: dicts (dlt normalises row by row in Python) and
  Arrow tables (dlt's documented fast route: Parquet load files, no row normalisation), each at two sizes
  (the trend), its one-off setup (pipeline, schema, destination tables: a first run of one page) timed
  separately; compared in rows/s of the fresh load.
- **Validation.** GX's pandas `column_values.between` (`column_values_between.py`) compares numeric and
  nanosecond-datetime columns vectorised and anything else with a per-row `Series.map`;
  `perpwatch/ingest/validate.py` hands GX times as epoch milliseconds (Int64), so every expectation takes
  the vectorised path. Section 1's diagnostic runs the same suite on the same rows alone: the gap to GX's
  time inside `load_table` is the two cores it shares with the upsert.
- **Allocator.** polars' jemalloc returns pages freed for 0.5 s to the OS (polars/__init__.py), so each
  batch page-faulted the memory the previous one had freed; perpwatch keeps them 10 s
  (`PERPWATCH_POLARS_DECAY_MS`, set in `perpwatch/__init__.py` before polars is imported). The load
  workload runs in a process that imported perpwatch first, as the CLI and the flows do.
- **Marts full rebuild.** `ts::DATE` on a TIMESTAMPTZ column goes through ICU for every row and a
  `QUALIFY row_number()` per day sorts the whole table (the diagnostics in section 2 measure both);
  the marts use epoch days and `arg_max`. The liquidation heatmap is built in the timings (its
  vectorised core, transforms/heatmap_core.py; its bars come from DuckDB as streamed integer cells placed
  on hour x series grids by numpy while DuckDB reads the next batch on a worker thread, and a rebuild takes
  the chosen bars straight onto the fold's asset x hour grids, docs/heatmap.md "Inputs"); its stored rows are
  bounded per asset-day ([heatmap] hourly_days, top_bins), and the daily build resumes it from the
  levels stored by the last build (meta.heatmap_levels: amount x a per-asset OI scale, so a day reads
  only the levels its hours can reach and writes only the levels that died or were born).
  In the fold, the levels are put in asset order once by a stable 16-bit radix sort (numpy sorts
  int16 keys by radix, numpy's `sort` docs) of the born cells, each cell expanded to its levels
  (`heatmap_core.born_order`), the death hours are searched per side and per chunk of
  about ten assets on two threads (range tables of at most 64 MB each, reused: see "Fresh memory" at the
  top for what a GiB of new memory costs here), and
  the snapshot grids are cumulated one contiguous row at a time (the same additions in the same order as
  `np.cumsum` along that axis); the rows' asset and side are gathered by index as `pl.Enum` and stored as
  VARCHAR (`warehouse.select_stored`); the line under the table splits the heatmap's time by stage.
  daily_signals reads carry from `marts.carry_daily`, the unranked table under the view `marts.carry` (DuckDB
  evaluates a view's window columns even when the reader selects none of them); a table, computed once per
  build (a daily build: from the new day on), where a view was re-aggregated from all history by every
  reader and every publish.
  signal_performance computes every asset's Newey-West t-statistic at once in closed form
  (`hac_tstats_by_group`; the per-group `hac_tstat` is its test oracle).
- **Incremental.** The date-partitioned marts opt in (`-- incremental: <date col> lookback
  <days>` headers, checked against a full rebuild by tests/test_bench_smoke.py), each reading its
  inputs from its own cut; daily_signals reads 7 days of inputs and takes its trailing windows' history
  (up to 365 days) from its own stored rows, alerts carries on the streaks stored for the day before,
  oi_milestones resumes from rearm_days back (`INCREMENTAL = "resume"`); signal_performance, an event
  study over all history, is refreshed by full builds only (`INCREMENTAL = "skip"`); other Python
  marts and views without a header are rebuilt in full. The generated staging is written in time
  order, 90 days at a time (bench/gen_warehouse.py), as daily loads write it, so a recent-days cut skips
  the older row groups by their zone maps.
- **Demo.** Extraction units are per (source, stream kind), so each venue's
  per-endpoint budgets (OKX: 5 requests / 2 s per ratio endpoint) run in parallel; the two backfills
  and the 15 s liquidation capture run at the same time (perpwatch/demo.py), after Prefect's local server is
  started once: two flows starting it at the same moment race ("Server process did not start").
"""
