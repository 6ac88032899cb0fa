"""A screenshot of the chat page (docs/web-chat.png): drives a running `oga-npu serve` in
headless Chromium (Debian's `chromium` and `chromium-driver`, through selenium; nothing is
downloaded), asks the questions given one after the other in one conversation, and saves a PNG.

    oga-npu serve -m models/smollm2-135m-instruct-cpu &
    python scripts/web_screenshot.py --out docs/web-chat.png \\
        "What is the capital of France?" "Write a Python function that reverses a string."

tests/server/test_web.py runs it against its test server.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

CHROMIUM = os.environ.get("OGA_NPU_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("OGA_NPU_CHROMEDRIVER", "/usr/bin/chromedriver")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("questions", nargs="+", help="messages to send, in order")
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default %(default)s)")
    ap.add_argument("--api-key", default=os.environ.get("OGA_NPU_API_KEY"), help="its --api-key, if any")
    ap.add_argument("--out", default="docs/web-chat.png")
    ap.add_argument("--model", help="model id (default: the page's first)")
    ap.add_argument("--system", default="", help="system prompt")
    ap.add_argument("--max-tokens", default="", help="max tokens per answer")
    ap.add_argument("--temperature", default="", help="sampling temperature")
    ap.add_argument("--size", default="1280x800", help="window size (default %(default)s)")
    ap.add_argument(
        "--scroll",
        choices=("bottom", "top"),
        default="bottom",
        help="show the conversation's end (default) or its start",
    )
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for each answer")
    args = ap.parse_args(argv)

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        f"--window-size={args.size.replace('x', ',')}",
        "--lang=en-US",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        base = args.url.rstrip("/")
        driver.get(base + "/web/icon.svg")  # the page's origin, for its localStorage
        store = {"settings": {"system": args.system, "max_tokens": args.max_tokens, "temperature": args.temperature}}
        if args.api_key:
            store["apiKey"] = args.api_key
        for k, v in store.items():
            driver.execute_script(
                "localStorage.setItem(arguments[0], JSON.stringify(arguments[1]));", "oga-npu." + k, v
            )
        driver.get(base + "/")
        find = lambda css: driver.find_element("css selector", css)
        WebDriverWait(driver, 60).until(lambda d: find("#server-state").get_attribute("data-state") == "ready")
        if args.model:
            Select(find("#model")).select_by_value(args.model)
        for n, question in enumerate(args.questions, 1):
            box = find("#input")
            box.send_keys(question)
            box.send_keys(Keys.ENTER)
            WebDriverWait(driver, args.timeout, 0.1).until(
                lambda d, n=n: len(d.find_elements("css selector", ".msg.assistant")) == n
                and not d.find_elements("css selector", ".msg.assistant .pending")
            )
            print(
                f"answer {n}: {driver.find_elements('css selector', '.msg.assistant')[-1].text[:200]!r}",
                file=sys.stderr,
            )
        if args.scroll == "top":
            driver.execute_script("document.getElementById('messages').scrollTop = 0;")
        time.sleep(0.3)  # the last paint
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        driver.save_screenshot(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    finally:
        driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
