"""Render a Superset dashboard in headless Chromium after logging in, and report what it drew.

Runs inside Superset's environment (`.venv-bi/bin/python -m bi.browser URL DASHBOARD OUT.png`),
which has Selenium; Chromium and its driver come from Debian (`make browser`). Prints one JSON
object: the charts on the page, which of them drew something, and any error tiles' text.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# Per chart holder: did it draw (echarts canvas/svg, a table, a big number) or show an error / empty state?
PROBE = """
const holders = [...document.querySelectorAll('[data-test="dashboard-component-chart-holder"]')];
return holders.map(h => {
  const title = (h.querySelector('[data-test="editable-title"], .header-title, [data-test="slice-header"]') || {}).innerText || '';
  const drawn = !!h.querySelector('canvas, svg.echarts, .echarts-for-react, table, .superset-legacy-chart-big-number, [data-test="big-number"], .big-number');
  const loading = !!h.querySelector('.loading, [aria-label="Loading"], [data-test="loading-indicator"]');
  const err = [...h.querySelectorAll('[role="alert"], .ant-alert-error, [data-test="error-tooltip"], .alert-danger')]
              .map(e => e.innerText.trim()).filter(Boolean);
  const empty = /No results were returned|No data/.test(h.innerText);
  return {title: title.trim().split('\\n')[0], drawn, loading, errors: err, empty, text: h.innerText.slice(0, 200)};
});
"""


def login_cookie(url: str, user: str, password: str) -> str:
    """The Flask session cookie from Superset's login form (what a person's browser gets)."""
    import requests

    s = requests.Session()
    page = s.get(f"{url}/login/", timeout=30).text
    token = re.search(r'name="csrf_token"\s+id="csrf_token"\s+value="([^"]+)"', page)
    if not token:
        raise RuntimeError("no CSRF token on the login page")
    r = s.post(f"{url}/login/", data={"csrf_token": token.group(1), "username": user, "password": password},
               timeout=30, allow_redirects=False)
    if r.status_code not in (302, 303) or "session" not in s.cookies:
        raise RuntimeError(f"login form rejected: HTTP {r.status_code}")
    return s.cookies["session"]


def render(url: str, dashboard: str, out: str, user: str, password: str, timeout: float = 90.0) -> dict:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1600,3000", "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.set_page_load_timeout(timeout)
        driver.get(f"{url}/health")   # a page on the host, so the cookie can be set for it
        driver.add_cookie({"name": "session", "value": login_cookie(url, user, password), "path": "/"})
        driver.get(f"{url}/superset/dashboard/{dashboard}/?standalone=1")
        deadline = time.monotonic() + timeout
        charts: list[dict] = []
        stable = 0
        while time.monotonic() < deadline:
            charts = driver.execute_script(PROBE) or []
            settled = charts and all((c["drawn"] or c["errors"] or c["empty"]) and not c["loading"] for c in charts)
            stable = stable + 1 if settled else 0
            if stable >= 3:   # three probes in a row (1.5 s) with every chart settled: animations done
                break
            time.sleep(0.5)
        time.sleep(1.0)
        driver.save_screenshot(out)
        return {"url": driver.current_url, "title": driver.title, "charts": charts,
                "settled": stable >= 3, "screenshot": out}
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("dashboard", help="dashboard slug or id")
    ap.add_argument("out", help="PNG to write")
    ap.add_argument("--timeout", type=float, default=90.0)
    args = ap.parse_args(argv)
    result = render(args.url, args.dashboard, args.out, os.environ.get("PERPWATCH_BI_ADMIN_USER", "admin"),
                    os.environ.get("PERPWATCH_BI_ADMIN_PASSWORD", "perpwatch"), args.timeout)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
