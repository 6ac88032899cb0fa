"""The chat page (`GET /`) in a real headless Chromium, and the server's log lines.

Chromium and its driver are Debian's (`apt-get install chromium chromium-driver`; .ci/run
installs them), driven by selenium with the system browser and driver: nothing is downloaded.
Without them the browser tests skip, except under CI=true, where they fail.

One server for the module: the tiny random-weight model and a copy of it under another name
(two models to switch between), --api-key, --max-queue 0 (a request that arrives while another
one generates is refused with 503: the page's "busy" message). One browser for the module;
each test opens the page afresh (and empties its localStorage) unless it says otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from serverutil import REPO, running

KEY = "web-test-key"
# Debian's paths; OGA_NPU_CHROMIUM / OGA_NPU_CHROMEDRIVER point elsewhere
CHROMIUM = os.environ.get("OGA_NPU_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("OGA_NPU_CHROMEDRIVER", "/usr/bin/chromedriver")
AUTH = {"Authorization": f"Bearer {KEY}"}
# Sampling over the whole vocabulary costs the tiny model ~12 ms a token (greedy: 0.4 ms),
# so an answer streams for a while (see test_server_lifecycle._long_stream).
SLOW = {"temperature": "1", "top_p": "1", "top_k": "0"}


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def models(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny model and a copy of its files under another folder name (= model id)."""
    twin = tmp_path_factory.mktemp("web_models") / "tiny-twin"
    twin.mkdir()
    for f in tiny_model.iterdir():
        if f.is_file():
            shutil.copy2(f, twin / f.name)
    return tiny_model, twin


@pytest.fixture(scope="module")
def server(models):
    with running(*models, args=("--api-key", KEY, "--max-queue", "0")) as s:
        yield s


@pytest.fixture(scope="session")
def chromium() -> None:
    """Session-scoped, so it is checked before the (session-scoped) tiny model is built."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        why = f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)"
        if _ci():
            pytest.fail(why + "; .ci/run installs them, so under CI=true this is a failure")
        pytest.skip(why)


@pytest.fixture(scope="module")
def browser(chromium):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--window-size=1280,860",
        "--lang=en-US",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)  # a given driver: no download
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


# ---------------------------------------------------------------- helpers


def wait(driver, cond, timeout: float = 60, what: str = "the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: cond())
    except Exception as e:
        raise AssertionError(
            f"waited {timeout}s for {what}; page text:\n{driver.find_element('tag name', 'body').text[-2000:]}"
        ) from e


def find(driver, css: str):
    return driver.find_element("css selector", css)


def find_all(driver, css: str):
    return driver.find_elements("css selector", css)


def open_page(driver, server, key: str | None = KEY):
    """The page with an empty localStorage (but for the API key), models listed."""
    driver.get(server.base + "/web/icon.svg")  # this origin, without running the page
    driver.execute_script("localStorage.clear();")
    if key:
        driver.execute_script("localStorage.setItem('oga-npu.apiKey', JSON.stringify(arguments[0]));", key)
    driver.get(server.base + "/")
    if key:
        wait(driver, lambda: find(driver, "#server-state").get_attribute("data-state") == "ready", what="models")


def click(driver, css: str):
    """Click the element now matching `css` (the page re-renders its messages after a dialog, and
    the model list after a pull: an element may be replaced, or not yet shown, for a moment)."""
    from selenium.common.exceptions import ElementNotInteractableException, StaleElementReferenceException

    for _ in range(40):
        try:
            return find(driver, css).click()
        except (StaleElementReferenceException, ElementNotInteractableException):
            time.sleep(0.05)
    raise AssertionError(f"{css} kept changing")


def settings(driver, **values):
    find(driver, "#open-settings").click()
    for name, value in values.items():
        box = find(driver, f"#set-{name}")
        box.clear()
        if value:
            box.send_keys(value)
    find(driver, "#settings-save").click()


def send(driver, text: str):
    from selenium.webdriver.common.keys import Keys

    box = find(driver, "#input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def answers(driver):
    return find_all(driver, ".msg.assistant")


def wait_answered(driver, n: int, timeout: float = 60):
    """Until the page shows n answers and none is still generating; returns the last one."""
    wait(
        driver,
        lambda: len(answers(driver)) == n
        and not find_all(driver, ".msg.assistant .pending")
        and not find(driver, "#stop").is_displayed(),
        timeout,
        f"answer {n}",
    )
    return answers(driver)[-1]


def metric(server, name: str, model: str) -> float:
    req = urllib.request.Request(server.base + "/metrics", headers=AUTH)
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    m = re.search(rf'^{name}{{model="{re.escape(model)}"}} ([0-9.e+]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def get_json(server, path: str) -> dict:
    req = urllib.request.Request(server.base + path, headers=AUTH)
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


def server_log(server) -> str:
    server.log.flush()
    return Path(server.log.name).read_text()


def wait_log(server, pattern: str, since: int = 0, timeout: float = 10) -> str:
    """The first line matching `pattern` in the server's output past offset `since`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, server_log(server)[since:], re.M)
        if m:
            return m.group(0)
        time.sleep(0.05)
    raise AssertionError(f"no log line matches {pattern!r}:\n{server_log(server)[-3000:]}")


# ---------------------------------------------------------------- without a browser


def test_the_page_is_served_without_the_key_with_a_strict_policy(server):
    with urllib.request.urlopen(server.base + "/", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
        csp = r.headers["Content-Security-Policy"]
        html = r.read().decode()
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    for src in re.findall(r'(?:src|href)="(/[^"]*)"', html):  # every file the page loads: served, no key
        assert server.get(src)[0] == 200, src
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)  # nothing from another site
    assert server.get("/web/nothing.js")[0] == 404
    assert server.get("/web/__init__.py")[0] == 404
    assert server.get("/v1/models")[0] == 401  # the data still needs the key


def test_page_scripts_build_nodes_never_html():
    """The model's text reaches the page only through DOM nodes and text (markdown.js)."""
    for name in ("app.js", "markdown.js", "manager.js"):
        src = (REPO / "oga_npu" / "server" / "web" / name).read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in src, (name, sink)


def test_log_lines_say_when_a_model_is_ready_and_one_line_per_request(server, models):
    for m in models:
        wait_log(server, rf"INFO: +model {m.name} ready: cpu, oga decoder, context 512, loaded from .* in [0-9.]+ s$")
    code, _, body = server.post(
        "/v1/chat/completions",
        {"model": models[1].name, "max_tokens": 5, "messages": [{"role": "user", "content": "log me"}]},
        headers=AUTH,
    )
    assert code == 200
    p = body["usage"]["prompt_tokens"]
    wait_log(
        server,
        rf"INFO: +POST /v1/chat/completions 200 [0-9.]+ s \| {models[1].name} \| prompt {p} tokens "
        r"\(\d+ cached\) \| completion 5 tokens \(length\) \| TTFT \d+ ms \| [0-9.]+ tok/s$",
    )
    assert (
        server.post(
            "/v1/chat/completions",
            {"model": models[0].name, "max_tokens": 600, "messages": [{"role": "user", "content": "too long"}]},
            headers=AUTH,
        )[0]
        == 400
    )
    wait_log(server, r"INFO: +POST /v1/chat/completions 400 [0-9.]+ s \| context_length_exceeded: the request needs")
    assert server.get("/v1/models")[0] == 401
    wait_log(server, r"INFO: +GET /v1/models 401 [0-9.]+ s \| invalid_api_key: ")
    server.get("/health")
    server.get("/")
    assert not re.search(r"GET /health|GET / ", server_log(server))  # pollers and page files: DEBUG only


def test_the_log_line_says_how_a_generation_ended():
    """serverlog in process: a finish reason, a client gone, a shutdown, an error before any token."""
    import asyncio

    from oga_npu.generate import GenerationEvent
    from oga_npu.server import log as serverlog
    from oga_npu.server.errors import ApiError

    ev = GenerationEvent("x", 5, 12, 7, "length", 0.0421, None, 88.04, cached_tokens=9)
    cases = [
        (ev, None, "(length)"),
        (GenerationEvent("x", 5, 12, 7, None, 0.0421, None, 88.04), GeneratorExit(), "(stopped: client gone)"),
        (GenerationEvent("x", 5, 12, 7, None, 0.0421), asyncio.CancelledError(), "(stopped: client gone)"),
        (
            GenerationEvent("x", 5, 12, 7, None, 0.0421),
            ApiError(503, "down", code="shutting_down"),
            "(stopped: shutting_down)",
        ),
    ]
    for last, exc, end in cases:
        rec = {"status": 200, "gen": None, "error": None}
        token = serverlog._current.set(rec)
        try:
            serverlog.generation_done("m", last, exc)
        finally:
            serverlog._current.reset(token)
        line = serverlog.format_line("POST", "/v1/chat/completions", 200, 1.234, rec["gen"], rec["error"])
        assert line.startswith("POST /v1/chat/completions 200 1.23 s | m | prompt 12 tokens (")
        assert f"completion 7 tokens {end} | TTFT 42 ms" in line, line
    rec = {"status": 200, "gen": None, "error": None}
    token = serverlog._current.set(rec)
    try:
        serverlog.generation_done("m", None, GeneratorExit())  # gone before the first token
        serverlog.error("server_busy", "m is busy")
    finally:
        serverlog._current.reset(token)
    assert (
        serverlog.format_line("POST", "/v1/completions", 503, 0.004, rec["gen"], rec["error"])
        == "POST /v1/completions 503 0.00 s | m | completion 0 tokens (stopped: client gone) | server_busy: m is busy"
    )
    serverlog.generation_done("m", ev, None)  # outside a request: nothing to do, no error


# ---------------------------------------------------------------- in the browser


def test_the_page_asks_for_the_api_key_and_keeps_it(browser, server, models):
    open_page(browser, server, key=None)
    dialog = wait(browser, lambda: (d := find(browser, "#key-dialog")).is_displayed() and d, what="the key dialog")
    assert "needs an API key" in dialog.text
    find(browser, "#key-input").send_keys("wrong-key")
    find(browser, "#key-save").click()
    wait(
        browser,
        lambda: "refused" in find(browser, "#key-message").text and find(browser, "#key-dialog").is_displayed(),
        what="the refused-key message",
    )
    find(browser, "#key-input").send_keys(KEY)
    find(browser, "#key-save").click()
    wait(browser, lambda: find(browser, "#server-state").get_attribute("data-state") == "ready", what="models")
    options = [o.get_attribute("value") for o in find_all(browser, "#model option")]
    assert options == [m.name for m in models]
    assert browser.execute_script("return JSON.parse(localStorage.getItem('oga-npu.apiKey'))") == KEY
    assert "512 tokens context" in find(browser, "#model-info").text


def test_an_answer_streams_in_with_its_stats_and_enter_sends(browser, server, models):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, server)
    settings(browser, max_tokens="40", **SLOW)
    browser.execute_script("""
        window.__seen = [];   // the answer's text length at each change of the page, while it streams
        new MutationObserver(() => {
          const a = document.querySelector('.msg.assistant .body');
          if (a && document.querySelector('.msg.assistant .pending')) window.__seen.push(a.textContent.length);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});""")
    box = find(browser, "#input")
    box.send_keys("line one")
    box.send_keys(Keys.SHIFT, Keys.ENTER)
    box.send_keys("line two")
    assert not answers(browser)  # Shift+Enter: a new line, nothing sent
    box.send_keys(Keys.ENTER)
    wait(browser, lambda: find(browser, "#stop").is_displayed(), what="the stop button")
    answer = wait_answered(browser, 1)
    assert find(browser, ".msg.user .bubble").text == "line one\nline two"
    seen = browser.execute_script("return window.__seen")
    partial = sorted({n for n in seen if n > 0})
    assert len(partial) >= 2, seen  # text appeared piece by piece before the end
    assert answer.find_element("css selector", ".body").text.strip()
    stats = answer.find_element("css selector", ".stats").text
    assert "40 tokens" in stats and re.search(r"TTFT \d+ ms", stats) and re.search(r"[0-9.]+ tok/s", stats), stats
    assert re.search(r"\d+ of \d+ prompt tokens cached", stats) and models[0].name in stats, stats
    assert "hit the token limit" in answer.text
    last = get_json(server, "/v1/stats")["last_request"]
    assert last["model"] == models[0].name and last["completion_tokens"] == 40 and last["finish_reason"] == "length"
    assert f"{last['decode_tokens_per_s']:.1f} tok/s" in stats, (stats, last)  # the server's own timing
    # the next turn starts with the first one: the server reuses its KV cache, the page says so
    send(browser, "and a third line")
    stats = wait_answered(browser, 2).find_element("css selector", ".stats").text
    cached, prompt = map(int, re.search(r"(\d+) of (\d+) prompt tokens cached", stats).groups())
    assert 0 < cached < prompt, stats


def test_stop_ends_the_answer_and_the_server_stops_generating(browser, server, models):
    model = models[0].name
    open_page(browser, server)
    settings(browser, max_tokens="460", **SLOW)  # most of the context: stopped long before its end
    before = metric(server, "oga_npu_cancelled_requests_total", model)
    mark = len(server_log(server))
    send(browser, "A long answer, please.")
    wait(browser, lambda: len(find(browser, ".msg.assistant .body").text) > 20, what="the answer to start")
    find(browser, "#stop").click()
    answer = wait_answered(browser, 1)
    assert "stopped" in answer.find_element("css selector", ".badge").text
    deadline = time.monotonic() + 10
    while metric(server, "oga_npu_cancelled_requests_total", model) != before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(server, "oga_npu_cancelled_requests_total", model) == before + 1
    line = wait_log(server, rf"POST /v1/chat/completions 200 .* \| {model} \| .*stopped: client gone.*$", mark)
    n = int(re.search(r"completion (\d+) tokens", line).group(1))
    assert 0 < n < 400, line  # stopped early, not run to the end of the context
    assert get_json(server, "/v1/stats")["models"][model]["queue_depth"] == 0
    # the stopped answer stays, with Regenerate; the server takes the next request at once
    click(browser, ".msg.assistant .regenerate")
    wait(browser, lambda: find(browser, "#stop").is_displayed(), what="regenerating")
    find(browser, "#stop").click()
    wait_answered(browser, 1)


def test_switching_models_sends_to_the_chosen_one(browser, server, models):
    from selenium.webdriver.support.ui import Select

    open_page(browser, server)
    settings(browser, max_tokens="6")
    Select(find(browser, "#model")).select_by_value(models[1].name)
    send(browser, "Which model are you?")
    answer = wait_answered(browser, 1)
    assert models[1].name in answer.find_element("css selector", ".stats").text
    assert get_json(server, "/v1/stats")["last_request"]["model"] == models[1].name
    Select(find(browser, "#model")).select_by_value(models[0].name)
    send(browser, "And now?")
    assert models[0].name in wait_answered(browser, 2).find_element("css selector", ".stats").text
    assert get_json(server, "/v1/stats")["last_request"]["model"] == models[0].name
    # the choice is remembered with the page
    browser.refresh()
    wait(browser, lambda: find(browser, "#server-state").get_attribute("data-state") == "ready", what="models")
    assert Select(find(browser, "#model")).first_selected_option.get_attribute("value") == models[0].name


def test_regenerate_new_chat_and_conversations_kept_in_the_browser(browser, server, models):
    open_page(browser, server)
    settings(browser, max_tokens="5", system="You answer in five words.")
    send(browser, "first chat")
    wait_answered(browser, 1)
    assert "You answer in five words." in find(browser, ".system-note").text
    lines = len(re.findall(r"POST /v1/chat/completions 200", server_log(server)))
    click(browser, ".msg.assistant .regenerate")
    wait(
        browser,
        lambda: len(re.findall(r"POST /v1/chat/completions 200", server_log(server))) == lines + 1,
        what="the regenerated request's log line",
    )
    wait_answered(browser, 1)  # replaced, not added
    assert len(find_all(browser, ".msg.user")) == 1
    find(browser, "#new-chat").click()
    assert not answers(browser) and find(browser, ".empty")
    send(browser, "second chat")
    wait_answered(browser, 1)
    titles = [e.text for e in find_all(browser, ".chat-open")]
    assert titles == ["second chat", "first chat"]
    stored = browser.execute_script("return JSON.parse(localStorage.getItem('oga-npu.chats'))")
    assert {c["title"] for c in stored} == {"first chat", "second chat"}
    assert next(c for c in stored if c["title"] == "first chat")["system"] == "You answer in five words."
    browser.refresh()  # kept across a reload
    wait(browser, lambda: [e.text for e in find_all(browser, ".chat-open")] == titles, what="the chat list")
    assert find(browser, ".msg.user .bubble").text == "second chat"
    find_all(browser, ".chat-open")[1].click()
    wait(browser, lambda: find(browser, ".msg.user .bubble").text == "first chat", what="the first chat")
    assert len(answers(browser)) == 1


def test_errors_are_said_in_words(browser, server, models):
    model = models[0].name
    open_page(browser, server)
    send(browser, "word " * 600)  # more than the 512-token context
    error = wait_answered(browser, 1).find_element("css selector", ".error").text
    assert "too long for the model" in error and "512 tokens" in error, error
    # busy: another client's request is generating, and --max-queue 0 lets none wait
    find(browser, "#new-chat").click()
    req = urllib.request.Request(
        server.base + "/v1/chat/completions",
        method="POST",
        headers={"Content-Type": "application/json", **AUTH},
        data=json.dumps(
            {
                "model": model,
                "stream": True,
                "max_tokens": 460,
                "temperature": 1.0,
                "top_k": 0,
                "top_p": 1.0,
                "ignore_eos": True,
                "messages": [{"role": "user", "content": "a long one"}],
            }
        ).encode(),
    )
    before = metric(server, "oga_npu_cancelled_requests_total", model)
    with urllib.request.urlopen(req, timeout=60) as other:
        other.readline()  # it is running
        send(browser, "hello")
        error = wait_answered(browser, 1).find_element("css selector", ".error").text
    assert "busy" in error, error
    deadline = time.monotonic() + 10  # the other stream, closed, is stopped
    while metric(server, "oga_npu_cancelled_requests_total", model) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(server, "oga_npu_cancelled_requests_total", model) == before + 1
    # a key that stops working: the page asks again and sends the message with the new one
    browser.execute_script("localStorage.setItem('oga-npu.apiKey', JSON.stringify('stale'))")
    settings(browser, max_tokens="4")
    click(browser, ".msg.assistant .regenerate")
    wait(browser, lambda: find(browser, "#key-dialog").is_displayed(), what="the key dialog")
    assert "refused" in find(browser, "#key-message").text
    find(browser, "#key-input").send_keys(KEY)
    find(browser, "#key-save").click()
    answer = wait_answered(browser, 1)
    assert not answer.find_elements("css selector", ".error") and "4 tokens" in answer.text


MALICIOUS = (
    'Look: <img src=x onerror="window.__pwned=1"> and <script>window.__pwned=2</script> '
    "[click](javascript:window.__pwned=3) [ok](https://example.org/a_b)\n\n"
    '```html\n<b onmouseover="window.__pwned=4">bold?</b>\n```\n\n'
    "- **bold** and `<i>code</i>`\n- second\n\n| a | b |\n|---|---|\n| <u>1</u> | 2 |\n"
)


def test_html_in_an_answer_is_shown_as_text_never_run(browser, server, models):
    """The tiny random model cannot be made to write HTML, so this one answer comes from a
    stand-in for fetch that streams SSE chunks exactly as the server frames them; the page's
    own parsing and rendering handle it."""
    open_page(browser, server)
    browser.get_log("browser")  # (earlier tests' entries)
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    chunks += [
        {"choices": [{"index": 0, "delta": {"content": MALICIOUS[i : i + 17]}, "finish_reason": None}]}
        for i in range(0, len(MALICIOUS), 17)
    ]
    chunks += [
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 9,
                "completion_tokens": 30,
                "total_tokens": 39,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        },
    ]
    sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    browser.execute_script(
        """
        const real = window.fetch, body = arguments[0];
        window.fetch = (url, opts) => {
          if (!String(url).endsWith('/v1/chat/completions')) return real(url, opts);
          window.fetch = real;
          const bytes = new TextEncoder().encode(body);
          const stream = new ReadableStream({start(c) {
            for (let i = 0; i < bytes.length; i += 50) c.enqueue(bytes.slice(i, i + 50));   // split anywhere
            c.close(); }});
          return Promise.resolve(new Response(stream, {status: 200, headers: {'Content-Type': 'text/event-stream'}}));
        };""",
        sse,
    )
    send(browser, "show me some html")
    answer = wait_answered(browser, 1)
    body = answer.find_element("css selector", ".body")
    assert browser.execute_script("return window.__pwned") is None
    for tag in ("img", "script", "b", "i", "u"):
        assert not body.find_elements("tag name", tag), tag
    text = body.text
    assert '<img src=x onerror="window.__pwned=1">' in text and "<script>window.__pwned=2</script>" in text
    assert find(browser, ".code-block code").text == '<b onmouseover="window.__pwned=4">bold?</b>'
    assert find(browser, ".code-block .code-lang").text == "html"
    links = {a.text: a.get_attribute("href") for a in body.find_elements("tag name", "a")}
    assert links == {"ok": "https://example.org/a_b"}  # the javascript: link is text only
    assert [e.text for e in body.find_elements("css selector", "li strong")] == ["bold"]
    assert [e.text for e in body.find_elements("css selector", "li code")] == ["<i>code</i>"]
    assert [e.text for e in body.find_elements("css selector", "td")] == ["<u>1</u>", "2"]
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors  # no script error, no blocked (CSP) resource


def test_screenshot_script(browser, server, models, tmp_path):
    """scripts/web_screenshot.py (what made docs/web-chat.png) against this server."""
    out = tmp_path / "chat.png"
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "web_screenshot.py"),
            "--url",
            server.base,
            "--api-key",
            KEY,
            "--out",
            str(out),
            "--max-tokens",
            "24",
            "--system",
            "Be brief.",
            "Hello!",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert f"wrote {out}" in r.stderr
