"""Screenshots of the review app's pages for docs/: the app on a registry (e.g. the one `make demo` fills,
demo-out/registry.db, with a queue made by `tunesmith review add base tuned --name demo`), each page
opened in headless chromium.

    python scripts/screenshots.py --registry demo-out/registry.db --queue demo --run tuned --out docs
    python scripts/screenshots.py --registry sweeps/registry.db --sweeps --out docs  # ui-sweep, ui-curve
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import uvicorn
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tunesmith.ui.app import create_app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registry", required=True)
    ap.add_argument("--queue", help="a review queue for the compare and review pages")
    ap.add_argument("--run", help="a run or eval to show on the run page")
    ap.add_argument("--sweeps", action="store_true", help="the newest sweep's and curve's report pages")
    ap.add_argument("--out", default="docs")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(args.registry), host="127.0.0.1", port=port))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.1)
    opts = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        opts.add_argument(flag)
    opts.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(shutil.which("chromedriver")))
    base = f"http://127.0.0.1:{port}/"
    try:
        driver.get(base)
        driver.find_element(By.ID, "reviewer").send_keys("ann", Keys.TAB)
        pages = {"runs": "#/runs", "queues": "#/queues"} if args.queue or args.run else {}
        if args.run:
            pages["run"] = f"#/run/{args.run}"
        if args.queue:
            pages.update({"compare": f"#/compare/{args.queue}", "review": f"#/review/{args.queue}"})
        if args.sweeps:  # the newest sweep's and the newest curve's report pages
            with urllib.request.urlopen(base + "api/studies") as r:
                for study in reversed(json.load(r)):
                    pages[study["kind"]] = f"#/studies/{study['key']}"
        for name, hash_ in pages.items():
            driver.get(base + hash_)
            time.sleep(1.5)
            path = Path(args.out) / f"ui-{name}.png"
            driver.save_screenshot(str(path))
            print(path)
    finally:
        driver.quit()
        server.should_exit = True


if __name__ == "__main__":
    main()
