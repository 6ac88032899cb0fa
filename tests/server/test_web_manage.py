"""The chat page against a server of a model store (serve --models-dir: models loaded on
demand), in headless Chromium (test_web.py's browser and helpers): the model manager (load,
unload, delete), the loading state of a first request, an answer kept across a reload, edit
and resend, the context meter and Settings' default answer length.

One server for the module: three copies of the tiny random-weight model in a store, --api-key,
--max-loaded 1; one browser for the module.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request

import pytest
import test_web
from serverutil import running
from test_web import (
    AUTH,
    KEY,
    SLOW,
    answers,
    click,
    find,
    find_all,
    get_json,
    open_page,
    send,
    settings,
    wait,
    wait_answered,
)

NAMES = ("tiny-a", "tiny-b", "tiny-c")
browser, chromium = test_web.browser, test_web.chromium  # this module's fixtures too: its own browser


@pytest.fixture(scope="module")
def store(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("web_store")
    for name in NAMES:
        shutil.copytree(tiny_model, root / name)
    return root


HUB_REPO = "acme/tiny-onnx"  # an OGA CPU folder on the hub-shaped test server (tests/hubserver.py)


@pytest.fixture(scope="module")
def hub(tiny_model):
    from hubserver import HubServer, folder_files

    with HubServer() as h:
        h.add(HUB_REPO, folder_files(tiny_model))
        yield h


@pytest.fixture(scope="module")
def server(store, hub, tmp_path_factory):
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path_factory.mktemp("hf_home"))}
    args = ("--models-dir", str(store), "--api-key", KEY, "--max-loaded", "1", "--max-queue", "0")
    with running(args=args, env=env) as s:
        yield s


def post(server, path: str, body: dict) -> tuple[int, dict]:
    code, _, data = server.post(path, body, headers=AUTH)
    return code, data


def unload_all(server):
    assert post(server, "/api/v1/unload", {})[0] == 200


def status(server, path: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(server.base + path, headers=AUTH), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def rows(driver) -> dict[str, str]:
    """The manager's installed models: {name: state}."""
    return driver.execute_script(
        """const out = {};
        for (const r of document.querySelectorAll('#installed-list .model-row'))
          out[r.dataset.id] = r.querySelector('.model-state').textContent;
        return out;"""
    )


def tokens(stats: str) -> int:
    """The answer's completion tokens, from its stats line ("5 tokens")."""
    return int(re.search(r"(?:^|\s)(\d+) tokens", stats).group(1))


def observe_pending(driver):
    driver.execute_script("""
        window.__pending = [];   // every text the answer's pending label showed
        new MutationObserver(() => {
          const p = document.querySelector('.msg.assistant .pending');
          const seen = window.__pending;
          if (p && seen[seen.length - 1] !== p.textContent) seen.push(p.textContent);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});""")


# ---------------------------------------------------------------- the server side


def test_a_request_without_max_tokens_gets_the_models_default_length(server):
    listed = {m["id"]: m for m in get_json(server, "/v1/models")["data"]}
    assert listed["tiny-a"]["default_max_tokens"] == 128  # min(1024, 512 / 4)
    code, body = post(
        server,
        "/v1/chat/completions",
        {"model": "tiny-a", "ignore_eos": True, "messages": [{"role": "user", "content": "ramble"}]},
    )
    assert code == 200 and body["usage"]["completion_tokens"] == 128 and body["choices"][0]["finish_reason"] == "length"
    assert get_json(server, "/v1/models/tiny-a")["default_max_tokens"] == 128


# ---------------------------------------------------------------- in the browser


def test_the_manager_loads_unloads_and_deletes(browser, server, store):
    unload_all(server)
    open_page(browser, server)
    find(browser, "#open-models").click()
    wait(browser, lambda: rows(browser) == dict.fromkeys(NAMES, "not loaded"), what="the installed models")
    facts = find(browser, '.model-row[data-id="tiny-a"] .model-facts').text
    assert re.search(r"\d+ MB · cpu · 512 tokens context", facts), facts
    has_catalog = status(server, "/api/v1/catalog") == 200  # another branch adds it; absent: no pull UI
    assert find(browser, "#catalog-section").is_displayed() == has_catalog
    click(browser, '.model-row[data-id="tiny-a"] .load')
    wait(browser, lambda: rows(browser).get("tiny-a") == "loaded", what="tiny-a loaded")
    assert [m["id"] for m in get_json(server, "/v1/models")["data"] if m["loaded"]] == ["tiny-a"]
    marks = {o.get_attribute("value"): o.text for o in find_all(browser, "#model option")}
    assert "loaded" in marks["tiny-a"] and "loaded" not in marks["tiny-b"], marks
    click(browser, '.model-row[data-id="tiny-a"] .unload')
    wait(browser, lambda: rows(browser).get("tiny-a") == "not loaded", what="tiny-a unloaded")
    assert not any(m["loaded"] for m in get_json(server, "/v1/models")["data"])
    # delete asks first; "no" keeps it
    browser.execute_script(
        "window.__asked = []; window.confirm = (q) => { window.__asked.push(q); return window.__yes; };"
    )
    browser.execute_script("window.__yes = false;")
    click(browser, '.model-row[data-id="tiny-c"] .delete')
    assert "tiny-c" in browser.execute_script("return window.__asked")[0]
    time.sleep(0.3)
    assert "tiny-c" in rows(browser) and (store / "tiny-c").is_dir()
    browser.execute_script("window.__yes = true;")
    click(browser, '.model-row[data-id="tiny-c"] .delete')
    wait(browser, lambda: "tiny-c" not in rows(browser), what="tiny-c gone from the list")
    assert not (store / "tiny-c").exists() and sorted(p.name for p in store.iterdir()) == ["tiny-a", "tiny-b"]
    assert [o.get_attribute("value") for o in find_all(browser, "#model option")] == ["tiny-a", "tiny-b"]
    assert [m["id"] for m in get_json(server, "/v1/models")["data"]] == ["tiny-a", "tiny-b"]


def test_a_first_request_shows_the_model_loading_then_the_header_says_loaded(browser, server):
    from selenium.webdriver.support.ui import Select

    unload_all(server)
    open_page(browser, server)
    Select(find(browser, "#model")).select_by_value("tiny-b")
    assert "loads on first use" in find(browser, "#model-info").text
    settings(browser, max_tokens="4")
    observe_pending(browser)
    send(browser, "wake up")
    wait_answered(browser, 1)
    seen = browser.execute_script("return window.__pending")
    assert seen[0] == "loading tiny-b…" and "generating…" in seen, seen
    wait(browser, lambda: "loads on first use" not in find(browser, "#model-info").text, what="the header")
    assert "loaded" in find(browser, "#model-info").text
    assert "loaded" in Select(find(browser, "#model")).first_selected_option.text
    # loaded now: the next answer goes straight to generating
    observe_pending(browser)
    send(browser, "again")
    wait_answered(browser, 2)
    assert browser.execute_script("return window.__pending") == ["generating…"]


def test_an_answer_streaming_when_the_page_reloads_keeps_its_text(browser, server):
    open_page(browser, server)
    settings(browser, max_tokens="400", **SLOW)
    send(browser, "A long answer, please.")
    wait(browser, lambda: len(find(browser, ".msg.assistant .body").text) > 60, what="the answer to stream")
    time.sleep(0.3)  # past the page's 250 ms between saves
    streamed = browser.execute_script("return window.ogaPage.state.busy.answer.content")
    browser.refresh()
    answer = wait_answered(browser, 1)
    assert "stopped" in answer.find_element("css selector", ".badge").text
    stored = browser.execute_script("return JSON.parse(localStorage.getItem('oga-npu.chats'))")[0]["messages"][1]
    assert stored["stopped"] is True and "pending" not in stored and "error" not in stored
    assert len(stored["content"]) >= len(streamed) - 40 and stored["content"][:40] == streamed[:40]
    assert answer.find_element("css selector", ".body").text.strip()


def test_edit_and_resend_the_meter_and_the_default_length(browser, server):
    open_page(browser, server)
    find(browser, "#open-settings").click()
    assert find(browser, "#set-max_tokens").get_attribute("placeholder") == "128"
    assert "default answer length, 128 tokens" in find(browser, "#default-length").text
    find(browser, "#set-max_tokens").send_keys("5")
    find(browser, "#settings-save").click()
    assert not find(browser, "#context-meter").is_displayed()
    send(browser, "first question")
    wait_answered(browser, 1)
    send(browser, "second question")
    stats = wait_answered(browser, 2).find_element("css selector", ".stats").text
    prompt, done = int(re.search(r"of (\d+) prompt tokens", stats).group(1)), tokens(stats)
    assert find(browser, "#context-text").text == f"{prompt + done} / 512 tokens"
    assert float(find(browser, "#context-bar").get_attribute("value")) == prompt + done
    click(browser, ".msg.user .edit")  # the first message
    box = find(browser, ".edit-box")
    assert box.get_attribute("value") == "first question"
    box.clear()
    box.send_keys("an edited question")
    click(browser, ".edit-send")
    wait(browser, lambda: len(find_all(browser, ".msg.user")) == 1, what="the conversation cut after the edit")
    answer = wait_answered(browser, 1)
    assert [e.text for e in find_all(browser, ".msg.user .bubble")] == ["an edited question"]
    assert len(answers(browser)) == 1
    chat = browser.execute_script("return JSON.parse(localStorage.getItem('oga-npu.chats'))")[0]
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant"]
    assert chat["messages"][0]["content"] == "an edited question" and chat["title"] == "an edited question"
    new_prompt = int(re.search(r"of (\d+) prompt tokens", answer.text).group(1))
    used = new_prompt + tokens(answer.text)
    assert new_prompt < prompt and find(browser, "#context-text").text == f"{used} / 512 tokens"
    # the default: Max tokens emptied, the request carries none (the server's 128)
    settings(browser, max_tokens="")
    browser.execute_script(
        """const real = window.fetch;
        window.__sent = [];
        window.fetch = (url, opts) => { if (String(url).endsWith('/v1/chat/completions')) window.__sent.push(opts.body);
          return real(url, opts); };"""
    )
    click(browser, ".msg.assistant .regenerate")
    wait_answered(browser, 1)
    body = json.loads(browser.execute_script("return window.__sent[0]"))
    assert "max_tokens" not in body
    assert 0 < tokens(find(browser, ".msg.assistant .stats").text) <= 128


CATALOG = [
    {
        "name": "smollm2-135m-cpu",
        "repo": "org/SmolLM2-135M-Instruct-onnx",
        "variant": "cpu-int4",
        "target": "cpu",
        "release": None,
        "oga_version": "0.9",
        "size_bytes": 2_000_000,
        "context": 2048,
        "license": "apache-2.0",
        "fits": True,
        "why": "",
        "installed": False,
    },
    {
        "name": "llama-3.2-3b-hybrid",
        "repo": "amd/Llama-3.2-3B-Instruct-awq-g128-int4-asym-fp16-onnx-hybrid",
        "variant": "",
        "target": "hybrid",
        "release": "1.7",
        "oga_version": "0.9",
        "size_bytes": 3_100_000_000,
        "context": 4096,
        "license": "llama3.2",
        "fits": False,
        "why": "needs a Ryzen AI NPU (none here)",
        "installed": False,
    },
]


def test_the_catalog_and_a_pull_with_progress(browser, server):
    """The catalog and pull routes come from another branch; here a stand-in for fetch answers
    them exactly in their contract's shapes (GET /api/v1/catalog, NDJSON from POST /api/v1/pull)."""
    lines = [
        {"status": "pulling manifest"},
        {"status": "pulling sha256:ab12", "digest": "sha256:ab12", "total": 2_000_000, "completed": 0},
        {"status": "pulling sha256:ab12", "digest": "sha256:ab12", "total": 2_000_000, "completed": 1_000_000},
        {"status": "pulling sha256:ab12", "digest": "sha256:ab12", "total": 2_000_000, "completed": 2_000_000},
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success", "model": "smollm2-135m-cpu"},
    ]
    open_page(browser, server)
    browser.execute_script(
        """const real = window.fetch, catalog = arguments[0], lines = arguments[1];
        window.__pulls = []; window.__progress = [];
        window.fetch = (url, opts) => {
          const u = String(url);
          if (u.endsWith('/api/v1/catalog'))
            return Promise.resolve(new Response(JSON.stringify({data: catalog}), {status: 200,
              headers: {'Content-Type': 'application/json'}}));
          if (!u.endsWith('/api/v1/pull')) return real(url, opts);
          window.__pulls.push(JSON.parse(opts.body));
          const enc = new TextEncoder();
          const stream = new ReadableStream({async start(c) {
            for (const l of lines) {
              c.enqueue(enc.encode(JSON.stringify(l) + '\\n'));
              await new Promise((r) => setTimeout(r, 60));
              const bar = document.getElementById('pull-progress');
              window.__progress.push([bar.value, bar.max, document.getElementById('pull-text').textContent]);
            }
            catalog[0].installed = true;
            c.close(); }});
          const headers = {'Content-Type': 'application/x-ndjson'};
          return Promise.resolve(new Response(stream, {status: 200, headers}));
        };""",
        CATALOG,
        lines,
    )
    find(browser, "#open-models").click()
    wait(browser, lambda: find(browser, "#catalog-section").is_displayed(), what="the catalog")
    rows = find_all(browser, "#catalog-list .catalog-row")
    assert [r.get_attribute("data-name") for r in rows] == ["smollm2-135m-cpu", "llama-3.2-3b-hybrid"]
    assert "does not fit" in rows[1].text and "needs a Ryzen AI NPU" in rows[1].text and "3.1 GB" in rows[1].text
    assert "fits here" in rows[0].text and "2 MB · cpu" in rows[0].text
    click(browser, '.catalog-row[data-name="smollm2-135m-cpu"] .pull')
    wait(browser, lambda: "is installed" in find(browser, "#pull-text").text, what="the pull to finish")
    assert browser.execute_script("return window.__pulls") == [{"model": "smollm2-135m-cpu", "variant": "cpu-int4"}]
    progress = browser.execute_script("return window.__progress")
    texts = [t for _, _, t in progress]
    assert "smollm2-135m-cpu: pulling manifest" in texts
    halfway = next(p for p in progress if "1 MB of 2 MB" in p[2])
    assert halfway[:2] == [1_000_000, 2_000_000]
    assert "smollm2-135m-cpu: verifying sha256 digest" in texts
    wait(
        browser,
        lambda: "installed" in find(browser, '.catalog-row[data-name="smollm2-135m-cpu"]').text,
        what="the catalog says installed",
    )
    # a refusal before the stream: said in words
    browser.execute_script(
        """const real = window.fetch;
        window.fetch = (url, opts) => String(url).endsWith('/api/v1/pull')
          ? Promise.resolve(new Response(JSON.stringify({error: "no model named 'nope' in the catalog"}),
              {status: 404, headers: {'Content-Type': 'application/json'}}))
          : real(url, opts);"""
    )
    find(browser, "#pull-name").send_keys("nope")
    find(browser, "#pull-name-go").click()
    wait(browser, lambda: "no model named 'nope'" in find(browser, "#models-message").text, what="the refusal")


def test_the_manager_pulls_through_the_real_route_then_loads_and_deletes(browser, server, store):
    """No stand-in: the page's Pull calls the server's POST /api/v1/pull, which downloads an OGA
    folder from the hub-shaped server (huggingface_hub's own client, sha256 checked) into the
    store; the manager lists it, loads it, a chat answers, and it is deleted."""
    unload_all(server)
    open_page(browser, server)
    find(browser, "#open-models").click()
    wait(browser, lambda: "tiny-a" in rows(browser), what="the installed models")
    before = set(rows(browser))
    wait(browser, lambda: find(browser, "#pull-name").is_displayed(), what="the pull field (shown with the catalog)")
    find(browser, "#pull-name").send_keys(HUB_REPO)
    find(browser, "#pull-name-go").click()
    wait(browser, lambda: "is installed" in find(browser, "#pull-text").text, timeout=120, what="the pull to finish")
    wait(browser, lambda: set(rows(browser)) - before, what="the pulled model in the list")
    (name,) = set(rows(browser)) - before
    assert (store / name / "genai_config.json").is_file() and not list(store.glob("*.partial"))
    manifest = json.loads((store / name / "oga_npu_manifest.json").read_text())
    assert json.dumps(manifest).count(HUB_REPO) >= 1 and "sha256" in json.dumps(manifest)
    click(browser, f'.model-row[data-id="{name}"] .load')
    wait(browser, lambda: rows(browser).get(name) == "loaded", what="the pulled model loaded")
    code, body = post(server, "/v1/chat/completions", {"model": name, "messages": [{"role": "user", "content": "Hi"}]})
    assert code == 200 and body["model"] == name, body
    browser.execute_script("window.confirm = () => true;")
    click(browser, f'.model-row[data-id="{name}"] .delete')
    wait(browser, lambda: name not in rows(browser), what="the pulled model deleted")
    assert not (store / name).exists()
