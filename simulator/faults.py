"""Fault injection for the simulator: transient transport and data faults drawn from a seed.

    sim = start(seed=7, now=NOW, faults="all", fault_rate=0.1, fault_seed=3)
    sim.faults.injected            # Counter: profile -> responses it changed
    sim.faults.injected_at         # Counter: (profile, prefix) -> the same, per venue prefix / stream
    sim.set_faults(None)           # back to clean answers

CLI: ``python -m perpwatch.simulator --faults 429,truncate,gap --fault-rate 0.1 --fault-seed 3`` (``--faults all``).

Every request attempt draws its own fault from ``hash(seed, method, path, query, body, attempt)``,
where ``attempt`` counts the identical requests seen so far. A retry of the same request (or the
next run, which asks for another window) therefore gets a fresh draw: faults are transient, and
repeated runs converge to what a fault-free run loads. ``rates={prefix: rate}`` overrides the rate
for some prefixes (a provider asked once a run needs a higher one to meet every profile in a short
soak); with ``cover=True`` a faulted attempt takes the applicable profile injected least often on its
prefix so far (ties broken by the draw), so a short soak meets every profile on every prefix. Profiles:

transport (any venue)
  429       the venue's own rate-limit answer + Retry-After (Bybit: HTTP 403 "access too frequent");
            requests sent while told to wait count as strikes, ``strikes_to_ban`` of them -> a 418 ban
  418       an IP ban (HTTP 418, Bybit 403) for ``ban_s`` seconds; every request during it gets 418 again
  5xx       a burst: this attempt and the next 0-2 attempts of the same request get 500/502/503/504
  slow      the answer comes ``slow_s`` x (0.5..1.5) seconds late
  timeout   the server stalls ``timeout_s`` seconds before answering (beyond the client's read timeout)
  reset     the connection is reset (RST), before the status line or in the middle of the body
  truncate  HTTP 200 with the JSON body cut short
  error200  HTTP 200 with an error envelope (OKX code 50011/50013, Bybit retCode 10006/10016)
data (the JSON rows of the Binance/Bybit/OKX data endpoints in SPECS)
  drift     a required field renamed or missing in every row (array rows: cut to one field), or a
            new field added to every row; ``drift:missing``, ``drift:renamed``, ``drift:new`` pick one
  duplicate 1-3 rows repeated in the page
  reorder   the page's rows shuffled
  gap       1-3 rows missing from inside the page (never the oldest or newest row)
  nan       one numeric field of one row is "NaN"
  negative  one non-negative quantity (price, volume, OI, ratio) of one row is negated
  absurd    one numeric field of one row is 1e20
websocket
  ws_disconnect  every websocket connection is closed (1011) after a seed-drawn 5-40 data messages
                 (drawn per stream and connection number); ``ws_drops=N``: only the first N
                 connections of each stream. Counted when the connection is closed.

Fields a parser treats as optional (they are absent from older real history: Binance ``markPrice``,
Bybit ``singleOpenInterest``, OKX ``realizedRate``) are never dropped by ``drift``: a parser cannot
tell their removal from old data (see docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from .common import Request, Response, json_response

TRANSPORT = ("429", "418", "5xx", "slow", "timeout", "reset", "truncate", "error200")
DATA = ("drift", "duplicate", "reorder", "gap", "nan", "negative", "absurd")
WEBSOCKET = ("ws_disconnect",)
PROFILES = TRANSPORT + DATA + WEBSOCKET
VARIANTS = ("drift:missing", "drift:renamed", "drift:new")

ABSURD = "100000000000000000000"      # 1e20: no price, volume, OI or ratio can be this


@dataclass(frozen=True)
class RowSpec:
    """Where a data endpoint's rows are and what their fields mean (for data faults)."""

    rows: str                         # "top" (a JSON list), "result.list" (Bybit), "data" (OKX)
    time: str | int                   # timestamp field (dict rows) or index (array rows)
    positive: tuple = ()              # quantities that cannot be negative
    signed: tuple = ()                # numeric fields that may be negative (funding rates)
    required: tuple = ()              # dict rows: fields the parser needs (drift targets)


_BN_KLINE = RowSpec("top", 0, positive=(1, 2, 3, 4, 5, 7))
_BY_KLINE = RowSpec("result.list", 0, positive=(1, 2, 3, 4, 5, 6))
_BY_PRICE = RowSpec("result.list", 0, positive=(1, 2, 3, 4))
_OKX_CANDLE = RowSpec("data", 0, positive=(1, 2, 3, 4, 5, 6, 7))
_OKX_PRICE = RowSpec("data", 0, positive=(1, 2, 3, 4))
_BN_RATIO = RowSpec("top", "timestamp", positive=("longShortRatio", "longAccount", "shortAccount"),
                    required=("symbol", "longShortRatio", "longAccount", "shortAccount", "timestamp"))
_OKX_RATIO = RowSpec("data", 0, positive=(1,))

SPECS: dict[tuple[str, str], RowSpec] = {
    ("binance-fapi", "/fapi/v1/fundingRate"): RowSpec(
        "top", "fundingTime", positive=("markPrice",), signed=("fundingRate",),
        required=("symbol", "fundingRate", "fundingTime")),
    ("binance-fapi", "/futures/data/openInterestHist"): RowSpec(
        "top", "timestamp", positive=("sumOpenInterest", "sumOpenInterestValue"),
        required=("symbol", "sumOpenInterest", "sumOpenInterestValue", "timestamp")),
    ("binance-fapi", "/futures/data/globalLongShortAccountRatio"): _BN_RATIO,
    ("binance-fapi", "/futures/data/topLongShortAccountRatio"): _BN_RATIO,
    ("binance-fapi", "/futures/data/topLongShortPositionRatio"): _BN_RATIO,
    ("binance-fapi", "/fapi/v1/klines"): _BN_KLINE,
    ("binance-fapi", "/fapi/v1/markPriceKlines"): _BN_KLINE,
    ("binance-fapi", "/fapi/v1/indexPriceKlines"): _BN_KLINE,
    ("binance-spot", "/api/v3/klines"): _BN_KLINE,
    ("bybit", "/v5/market/open-interest"): RowSpec(
        "result.list", "timestamp", positive=("openInterest", "singleOpenInterest"),
        required=("openInterest", "timestamp")),
    ("bybit", "/v5/market/funding/history"): RowSpec(
        "result.list", "fundingRateTimestamp", signed=("fundingRate",),
        required=("symbol", "fundingRate", "fundingRateTimestamp")),
    ("bybit", "/v5/market/account-ratio"): RowSpec(
        "result.list", "timestamp", positive=("buyRatio", "sellRatio"),
        required=("symbol", "buyRatio", "sellRatio", "timestamp")),
    ("bybit", "/v5/market/kline"): _BY_KLINE,
    ("bybit", "/v5/market/mark-price-kline"): _BY_PRICE,
    ("bybit", "/v5/market/index-price-kline"): _BY_PRICE,
    ("okx", "/api/v5/rubik/stat/contracts/open-interest-history"): RowSpec("data", 0, positive=(1, 2, 3)),
    ("okx", "/api/v5/rubik/stat/contracts/long-short-account-ratio-contract"): _OKX_RATIO,
    ("okx", "/api/v5/rubik/stat/contracts/long-short-account-ratio-contract-top-trader"): _OKX_RATIO,
    ("okx", "/api/v5/rubik/stat/contracts/long-short-position-ratio-contract-top-trader"): _OKX_RATIO,
    ("okx", "/api/v5/public/funding-rate-history"): RowSpec(
        "data", "fundingTime", signed=("fundingRate", "realizedRate"),
        required=("instId", "fundingRate", "fundingTime")),
    ("okx", "/api/v5/market/candles"): _OKX_CANDLE,
    ("okx", "/api/v5/market/history-candles"): _OKX_CANDLE,
    ("okx", "/api/v5/market/mark-price-candles"): _OKX_PRICE,
    ("okx", "/api/v5/market/history-mark-price-candles"): _OKX_PRICE,
    ("okx", "/api/v5/market/index-candles"): _OKX_PRICE,
    ("okx", "/api/v5/market/history-index-candles"): _OKX_PRICE,
}

ERROR_200 = {
    "okx": [{"code": "50011", "msg": "Too Many Requests", "data": []},
            {"code": "50013", "msg": "Systems are busy. Please try again later.", "data": []}],
    "bybit": [{"retCode": 10006, "retMsg": "Too many visits!", "result": {}, "retExtInfo": {}},
              {"retCode": 10016, "retMsg": "Internal server error.", "result": {}, "retExtInfo": {}}],
}


def parse_profiles(spec: str | list | tuple | None) -> tuple[str, ...]:
    """'all' | 'NAME[,NAME]' | list -> profile names (validated)."""
    if not spec:
        return ()
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    if "all" in names:
        return PROFILES
    unknown = sorted(set(names) - set(PROFILES) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown fault profile(s) {unknown}; known: {', '.join(PROFILES + VARIANTS)} or all")
    return tuple(dict.fromkeys(names))


def _rate_limited(prefix: str, retry_after: float) -> Response:
    ra = {"Retry-After": str(max(1, round(retry_after)) if retry_after >= 1 else retry_after)}
    if prefix == "bybit":      # Bybit documents no Retry-After on its 403 (rate-limit page): none is sent
        return Response(403, b"access too frequent", "text/plain")
    if prefix == "okx":
        return json_response({"msg": "Too Many Requests", "code": "50011", "data": []}, 429, ra)
    if prefix == "deribit":
        return json_response({"jsonrpc": "2.0", "error": {"message": "too_many_requests", "code": 10028}}, 429)
    if prefix == "hyperliquid":
        return Response(429, b"null", "application/json", ra)
    return json_response({"code": -1003, "msg": "Too many requests; current limit is exceeded. (injected)"}, 429, ra)


def _banned(prefix: str, seconds: float) -> Response:
    ra = {"Retry-After": str(max(1, round(seconds)) if seconds >= 1 else round(seconds, 3))}
    if prefix == "bybit":
        return Response(403, b"access too frequent (ip banned)", "text/plain")
    until = int((time.time() + seconds) * 1000)
    return json_response({"code": -1003, "msg": f"Way too many requests; IP banned until {until}. (injected)"}, 418, ra)


class Faults:
    """Decides and applies faults; thread-safe. ``injected`` counts what was done per profile."""

    def __init__(self, profiles, rate: float = 0.05, seed: int = 7, *, retry_after: float = 1.0,
                 ban_s: float = 2.0, slow_s: float = 0.3, timeout_s: float = 31.0, strikes_to_ban: int = 10,
                 rates: dict[str, float] | None = None, cover: bool = False, ws_drops: int | None = None):
        self.profiles = parse_profiles(profiles)
        for r in [rate, *(rates or {}).values()]:
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"fault rate must be within [0, 1], got {r}")
        self.rate = float(rate)
        self.rates = {k: float(v) for k, v in (rates or {}).items()}
        self.cover = cover
        self.ws_drops = ws_drops
        self.seed = int(seed)
        self.retry_after, self.ban_s, self.slow_s, self.timeout_s = retry_after, ban_s, slow_s, timeout_s
        self.strikes_to_ban = strikes_to_ban
        self.injected: Counter[str] = Counter()
        self.injected_at: Counter[tuple[str, str]] = Counter()   # (profile, prefix)
        self.violations: Counter[str] = Counter()   # requests sent while told to wait / banned
        self.log: list[tuple[str, str, str, int]] = []   # (profile, prefix, path?query, attempt)
        self._attempts: Counter[tuple] = Counter()
        self._burst: dict[tuple, int] = {}
        self._told_until: dict[str, float] = {}
        self._banned_until: dict[str, float] = {}
        self._strikes: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Faults({','.join(self.profiles)}, rate={self.rate}, seed={self.seed})"

    # ------------------------------------------------------------------ drawing
    def _digest(self, *parts) -> bytes:
        return hashlib.sha256("|".join(str(p) for p in (self.seed, *parts)).encode()).digest()

    def applicable(self, prefix: str, path: str) -> list[str]:
        out = []
        for p in self.profiles:
            if p in WEBSOCKET:
                continue
            if p == "error200" and prefix not in ERROR_200:
                continue
            if p.split(":")[0] in DATA and (prefix, path) not in SPECS:
                continue
            out.append(p)
        return out

    def draw(self, prefix: str, req: Request) -> tuple[str | None, int, random.Random]:
        """The fault for this attempt of this exact request (None = clean), the attempt number and an rng."""
        key = (req.method, prefix, req.path, tuple(sorted(req.query.items())), req.body)
        with self._lock:
            self._attempts[key] += 1
            attempt = self._attempts[key]
            burst_to = self._burst.get(key, 0)
        d = self._digest(*key, attempt)
        rng = random.Random(int.from_bytes(d[16:], "big"))
        if attempt <= burst_to:
            return "5xx", attempt, rng
        if not self.profiles or int.from_bytes(d[:8], "big") / 2.0 ** 64 >= self.rates.get(prefix, self.rate):
            return None, attempt, rng
        options = self.applicable(prefix, req.path)
        if not options:
            return None, attempt, rng
        if self.cover:
            with self._lock:
                seen = {p: self.injected_at[(p.split(":")[0], prefix)] for p in options}
            options = [p for p in options if seen[p] == min(seen.values())]
        profile = options[int.from_bytes(d[8:16], "big") % len(options)]
        if profile == "5xx":
            with self._lock:
                self._burst[key] = attempt + rng.randint(0, 2)
        return profile, attempt, rng

    def ws_drop_after(self, stream: str, connection: int) -> int | None:
        """Data messages after which connection `connection` (1, 2, ... per stream) is closed; None: never."""
        if "ws_disconnect" not in self.profiles or (self.ws_drops is not None and connection > self.ws_drops):
            return None
        d = self._digest("ws", stream, connection)
        return 5 + int.from_bytes(d[:4], "big") % 36

    def ws_dropped(self, stream: str, connection: int, sent: int) -> None:
        self._record("ws_disconnect", stream, f"connection {connection} after {sent} messages", connection)

    # ------------------------------------------------------------------ serving
    def serve(self, prefix: str, req: Request, handle: Callable[[], Response]) -> tuple[Response, str | None]:
        """Answer one request: returns (response, reset) with reset None, 'before' or 'mid'."""
        now = time.monotonic()
        with self._lock:
            banned = self._banned_until.get(prefix, 0.0)
            told = self._told_until.get(prefix, 0.0)
            if now < banned:
                self.violations["request_while_banned"] += 1
                return _banned(prefix, banned - now), None
            if now < told:
                self.violations["request_while_told_to_wait"] += 1
                self._strikes[prefix] += 1
                if self._strikes[prefix] >= self.strikes_to_ban:
                    self._strikes[prefix] = 0
                    self._banned_until[prefix] = now + self.ban_s
                    self.injected["418"] += 1
                    self.injected_at[("418", prefix)] += 1
                    self.violations["ban_after_overuse"] += 1
                    return _banned(prefix, self.ban_s), None
                return _rate_limited(prefix, told - now), None
            if told and now >= told:
                self._strikes[prefix] = 0
        profile, attempt, rng = self.draw(prefix, req)
        if profile is None:
            return handle(), None
        q = "&".join(f"{k}={v}" for k, v in sorted(req.query.items()))
        where = req.path + ("?" + q if q else "")
        if profile in ("slow", "timeout"):          # counted before the stall
            self._record(profile, prefix, where, attempt)
        resp, reset, applied = self._apply(profile, prefix, req, rng, handle, now)
        if applied and profile not in ("slow", "timeout"):   # not applied: e.g. a gap in a page of two rows
            self._record(profile + (f":{reset}" if reset else ""), prefix, where, attempt)
        return resp, reset

    def _record(self, name: str, prefix: str, where: str, attempt: int) -> None:
        with self._lock:
            self.injected[name.split(":")[0] if name.startswith("reset") else name] += 1
            self.injected_at[(name.split(":")[0], prefix)] += 1
            self.log.append((name, prefix, where, attempt))
            del self.log[:-5000]

    def _apply(self, profile: str, prefix: str, req: Request, rng: random.Random,
               handle: Callable[[], Response], now: float) -> tuple[Response, str | None, bool]:
        if profile == "429":
            with self._lock:
                self._told_until[prefix] = max(self._told_until.get(prefix, 0.0), now + self.retry_after)
            return _rate_limited(prefix, self.retry_after), None, True
        if profile == "418":
            with self._lock:
                self._banned_until[prefix] = max(self._banned_until.get(prefix, 0.0), now + self.ban_s)
            return _banned(prefix, self.ban_s), None, True
        if profile == "5xx":
            code = rng.choice([500, 502, 503, 504])
            return Response(code, f"<html><body><h1>{code} (injected)</h1></body></html>".encode(),
                            "text/html"), None, True
        if profile == "slow":
            time.sleep(self.slow_s * rng.uniform(0.5, 1.5))
            return handle(), None, True
        if profile == "timeout":
            time.sleep(self.timeout_s)
            return handle(), None, True
        resp = handle()
        if profile == "reset":
            return resp, rng.choice(["before", "mid"]), True
        if resp.status != 200:
            return resp, None, False
        if profile == "truncate":
            if len(resp.body) < 2:
                return resp, None, False
            cut = rng.randint(1, len(resp.body) - 1)
            return Response(200, resp.body[:cut], resp.content_type, dict(resp.headers)), None, True
        if profile == "error200":
            body = dict(rng.choice(ERROR_200[prefix]))
            if prefix == "bybit":
                body["time"] = int(time.time() * 1000)
            return json_response(body, 200, dict(resp.headers)), None, True
        spec = SPECS[(prefix, req.path)]
        try:
            data = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            return resp, None, False
        if not mutate(profile, data, spec, rng):
            return resp, None, False
        return Response(200, orjson.dumps(data), resp.content_type, dict(resp.headers)), None, True


# --------------------------------------------------------------------------- data faults

def rows_of(data, spec: RowSpec) -> list | None:
    if spec.rows == "top":
        return data if isinstance(data, list) else None
    node = data
    for part in spec.rows.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node if isinstance(node, list) else None


def _get(row, field):
    try:
        return row[field]
    except (KeyError, IndexError, TypeError):
        return None


def _is_number(v) -> bool:
    if isinstance(v, bool) or v is None:
        return False
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def mutate(profile: str, data, spec: RowSpec, rng: random.Random) -> bool:
    """Apply one data fault to the decoded body in place. False when it does not apply (too few rows)."""
    rows = rows_of(data, spec)
    if not rows:
        return False
    n = len(rows)
    if profile == "duplicate":
        for _ in range(rng.randint(1, min(3, n))):
            rows.insert(rng.randint(0, len(rows)), rows[rng.randrange(n)])
        return True
    if profile == "reorder":
        if n < 2:
            return False
        before = list(rows)
        while rows == before:
            rng.shuffle(rows)
        return True
    if profile == "gap":
        if n < 3:
            return False
        times = [int(_get(r, spec.time) or 0) for r in rows]
        edge = {times.index(min(times)), times.index(max(times))}
        inner = [i for i in range(n) if i not in edge]
        drop = set(rng.sample(inner, rng.randint(1, min(3, len(inner)))))
        rows[:] = [r for i, r in enumerate(rows) if i not in drop]
        return True
    if profile.startswith("drift"):
        dict_rows = isinstance(rows[0], dict)
        kind = profile.split(":", 1)[1] if ":" in profile else \
            rng.choice(["missing", "renamed", "new"] if dict_rows and spec.required else ["missing", "new"])
        if kind == "renamed" and not (dict_rows and spec.required):
            kind = "missing"
        if kind == "new":
            for r in rows:
                if isinstance(r, dict):
                    r["newField"] = "1"
                elif isinstance(r, list):
                    r.append("0")
            return True
        if not dict_rows:                  # array rows: every row loses all but its first field
            for r in rows:
                if isinstance(r, list):
                    del r[1:]
            return True
        field = rng.choice(spec.required)
        for r in rows:
            if isinstance(r, dict) and field in r:
                value = r.pop(field)
                if kind == "renamed":
                    r[field[0].lower() + field[1:] + "_v2"] = value
        return True
    # one value of one row
    fields = spec.positive if profile == "negative" else spec.positive + spec.signed
    cands = [(i, f) for i, r in enumerate(rows) for f in fields if _is_number(_get(r, f))]
    if profile == "negative":
        cands = [(i, f) for i, f in cands if float(_get(rows[i], f)) > 0]
    if not cands:
        return False
    i, f = rng.choice(cands)
    v = rows[i][f]
    if profile == "nan":
        new = "NaN"
    elif profile == "negative":
        new = "-" + str(v) if isinstance(v, str) else -v
    else:
        new = ABSURD
    rows[i][f] = new
    return True
