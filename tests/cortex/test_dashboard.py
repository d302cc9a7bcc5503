"""The dashboard (`/ui/`) in a real headless Chromium against a real gateway and neuron.

One `neuron serve` (one CPU device, the tiny Qwen loaded) serves the module;
each test starts a gateway in-process and drives Debian's `chromium` with
Playwright from a worker thread (the gateway's trio loop keeps serving
meanwhile). What the page claims is checked against the neuron's own
`/models`. Each view is saved as a screenshot under `tests/artifacts/dashboard/`
(or `$HELEXA_ARTIFACTS/dashboard/`); the page must log no console error other
than the browser's own line for an expected 401/403.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from cortex.config import ApiKey, CortexConfig, Entitlements, Eviction, Fleet, Gateway, Http, Neuron
from cortex.fleet_snapshot import Catalogue, ModelProfile
from cortex.gateway import Gateway as CortexGateway
from tests.neuron.daemon_harness import (
    HTTPX_ASYNCGEN_WARNING,
    LLAMA,
    QWEN,
    start_daemon,
    synthesize_models,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

CHROMIUM = os.environ.get("HELEXA_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
ARTIFACTS = Path(os.environ.get("HELEXA_ARTIFACTS", Path(__file__).parents[1] / "artifacts"))
ADMIN = "sk-admin-dash-4e5f6a7b"
USER = "sk-user-dash-8c9d0e1f"
EXPECTED_REFUSAL = re.compile(r"^Failed to load resource: the server responded with a status of "
                              r"40[13] ")  # fmt: skip
TIMEOUT_MS = 30_000

if shutil.which(CHROMIUM) is None:
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def neuron(tmp_path_factory):
    models = synthesize_models(tmp_path_factory.mktemp("dash-models"))
    settings = {"cpu": {"devices": 1, "threads": 1, "memory_mb": 64}}
    daemon = start_daemon(tmp_path_factory.mktemp("dash-neuron"), models, settings=settings)
    try:
        yield daemon
    finally:
        daemon.stop()


def config(neuron, keys: tuple[ApiKey, ...]) -> CortexConfig:
    return CortexConfig(
        models_config="",
        gateway=Gateway(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0"),
        eviction=Eviction(min_residency_seconds=0),
        neurons=(Neuron(name="n1", endpoint=neuron.url),),
        fleet=Fleet(poll_interval=0.3, poll_timeout=2, failure_threshold=2, backoff_max=1),
        http=Http(keepalive_interval=0.2, retries=0, drain_timeout=5),
        entitlements=Entitlements(require_auth=bool(keys), keys=keys),
        catalogue=Catalogue.of([ModelProfile(id=QWEN, vram_mb=4),
                                ModelProfile(id=LLAMA, vram_mb=4)], {}),
    )  # fmt: skip


@pytest.fixture
async def gateway(neuron, nursery):
    """`await gateway(keys)`: a running gateway whose node is up; stopped after the test."""
    started: list[CortexGateway] = []

    async def start(keys: tuple[ApiKey, ...] = ()) -> CortexGateway:
        gw = CortexGateway(config(neuron, keys))
        await nursery.start(gw.run)
        started.append(gw)
        with trio.fail_after(10):
            while not gw.fleet.healthy():
                await gw.fleet.wait_changed()
        return gw

    yield start
    for gw in started:
        gw.stop()


Scenario = Callable[[Any, Callable[[str], None]], None]


async def in_browser(scenario: Scenario, name: str) -> list[str]:
    """Run `scenario(page, shot)` in a fresh headless Chromium, off the trio thread
    (`shot(view)` saves a screenshot under `<artifacts>/dashboard/<name>/`); the
    console errors the page logged."""
    return await trio.to_thread.run_sync(functools.partial(_browse, scenario, name))


def _browse(scenario: Scenario, name: str) -> list[str]:
    errors: list[str] = []
    folder = ARTIFACTS / "dashboard" / name
    folder.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            page.set_default_timeout(TIMEOUT_MS)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
            scenario(page, lambda view: page.screenshot(path=str(folder / f"{view}.png")))
        finally:
            browser.close()
    return errors


def open_view(page: Any, view: str) -> None:
    page.get_by_role("link", name=view.capitalize(), exact=True).click()
    page.wait_for_selector(f"#view-{view}:not([hidden])")


def confirm(page: Any) -> None:
    page.wait_for_selector("dialog#confirm[open]")
    page.click("#confirm-ok")


def notice(page: Any, pattern: str) -> str:
    """Wait until the notice line matches `pattern`; its text."""
    locator = page.locator("#notice")
    sync_api.expect(locator).to_have_text(re.compile(pattern), timeout=TIMEOUT_MS)
    return locator.inner_text()


def neuron_status(neuron, model: str) -> str | None:
    return next((m["status"] for m in neuron.get("/models") if m["id"] == model), None)


def watch(page: Any, selector: str, name: str) -> None:
    """Record on the page whether anything matching `selector` is ever added (a
    progress bar may live for less than a frame on a fast load)."""
    page.evaluate("""([selector, name]) => {
        window[name] = false;
        new MutationObserver(() => { if (document.querySelector(selector)) window[name] = true; })
            .observe(document.body, {childList: true, subtree: true, characterData: true});
    }""", [selector, name])  # fmt: skip


# ---------------------------------------------------------------------------------------------


async def test_an_open_gateway_shows_drives_and_streams(gateway, neuron):
    gw = await gateway()

    def scenario(page: Any, shot: Callable[[str], None]) -> None:
        page.goto(gw.url + "/")  # a browser asking for / lands on the dashboard
        assert page.url.startswith(gw.url + "/ui/"), page.url
        node = page.locator('article[data-node="n1"]')
        sync_api.expect(node).to_contain_text(QWEN)
        sync_api.expect(node).to_contain_text("loaded")
        sync_api.expect(node.locator("h3")).to_contain_text("up")
        sync_api.expect(page.locator("#auth-status")).to_have_text("open gateway: no key needed")
        shot("fleet")

        open_view(page, "models")
        page.get_by_role("button", name=f"Unload {QWEN} from n1").click()
        confirm(page)
        notice(page, f"^Unloaded {re.escape(QWEN)} from n1")
        wait_for(lambda: neuron_status(neuron, QWEN) in (None, "unloaded"), what="unloaded")

        page.select_option("#load-node", "n1")  # on a named node
        watch(page, "#models-body progress", "sawProgress")
        page.get_by_role("button", name=f"Load {QWEN}", exact=True).click()
        confirm(page)
        notice(page, rf"^Loaded {re.escape(QWEN)} on n1 in [\d.]+ s")
        assert page.evaluate("window.sawProgress"), "no progress was shown during the load"
        assert neuron_status(neuron, QWEN) == "loaded"
        sync_api.expect(page.locator("#models-body")).to_contain_text("n1: loaded")
        shot("models")

        page.get_by_role("button", name=f"Pin {QWEN}", exact=True).click()
        confirm(page)
        notice(page, rf"^Pinned {re.escape(QWEN)}\.$")
        marker = page.locator(f'#models-body [data-pin="{QWEN}"]')
        sync_api.expect(marker).to_have_text("pinned")  # drawn from the next /admin/fleet
        sync_api.expect(page.get_by_role("button", name=f"Unpin {QWEN}")).to_be_enabled()
        assert gw.fleet.pins == {QWEN}
        shot("models-pinned")
        open_view(page, "fleet")  # the copy on n1 is marked there too
        sync_api.expect(node.locator("tr", has_text=QWEN).locator(".st-pinned")).to_have_count(1)
        open_view(page, "models")
        page.get_by_role("button", name=f"Unpin {QWEN}").click()
        confirm(page)
        notice(page, rf"^Unpinned {re.escape(QWEN)}\.$")
        sync_api.expect(marker).to_have_count(0)
        assert gw.fleet.pins == set()

        page.get_by_role("button", name="Drain n1").click()
        confirm(page)
        notice(page, r"^n1: drained \(0 in flight\)")
        assert gw.fleet.nodes["n1"].draining  # a plain attribute: safe to read from here
        page.get_by_role("button", name="Undrain n1").click()
        confirm(page)
        notice(page, "^n1: active")
        assert not gw.fleet.nodes["n1"].draining

        open_view(page, "playground")
        sync_api.expect(page.locator("#chat-model")).to_have_value(QWEN)
        page.fill("#chat-max", "12")
        page.fill("#chat-input", "Tell me a story.")
        watch(page, "#transcript .assistant pre:not(:empty)", "sawPartial")
        page.click("#chat-send")
        stats = page.locator("#chat-stats")
        sync_api.expect(stats).to_have_text(re.compile(r"^done: \d+ chunks"), timeout=TIMEOUT_MS)
        chunks = int(re.search(r"(\d+) chunks", stats.inner_text()).group(1))
        assert chunks >= 1 and page.evaluate("window.sawPartial")
        assert page.locator("#transcript .assistant pre").inner_text().strip()
        shot("playground")

        open_view(page, "traffic")
        recent = page.locator("#traffic-body tbody tr").first
        sync_api.expect(recent).to_contain_text("/v1/chat/completions")
        sync_api.expect(recent).to_contain_text(QWEN)
        sync_api.expect(recent).to_contain_text("ok")
        sync_api.expect(page.locator("#chart-tps svg rect").first).to_be_attached()
        shot("traffic")

        open_view(page, "actors")
        sync_api.expect(page.locator("#actors-summary")).to_contain_text("(live)")
        sync_api.expect(page.locator("#actors-body")).to_contain_text("fleet")
        sync_api.expect(page.locator("#node-actors")).to_contain_text("Node n1")
        shot("actors")
        root = page.locator("#actors-body > details")
        root.locator("> summary").click()  # collapse the whole tree
        assert root.get_attribute("open") is None
        sync_api.expect(root.locator("details").first).to_be_hidden()

    errors = await in_browser(scenario, "open")
    assert errors == []


async def test_keys_a_wrong_key_is_401_and_a_user_key_may_not_act(gateway, neuron):
    keys = (ApiKey(key=ADMIN, account_id="ops", admin=True),
            ApiKey(key=USER, account_id="team", key_id="team-user"))  # fmt: skip
    gw = await gateway(keys)
    assert neuron_status(neuron, QWEN) == "loaded"

    def use_key(page: Any, key: str) -> None:
        page.fill("#key-input", key)
        page.get_by_role("button", name="Use key").click()

    def scenario(page: Any, shot: Callable[[str], None]) -> None:
        page.goto(gw.url + "/ui/")
        status = page.locator("#auth-status")
        sync_api.expect(status).to_contain_text("401: missing API key")
        sync_api.expect(page.locator("#key-input")).to_be_focused()

        use_key(page, "sk-wrong-0000")
        sync_api.expect(status).to_have_text("401: invalid API key")
        shot("wrong-key")

        use_key(page, USER)
        sync_api.expect(status).to_contain_text("403: key 'team-user' may not use admin routes")
        open_view(page, "models")
        page.get_by_role("button", name=f"Unload {QWEN} from n1").click()
        confirm(page)
        notice(page, "^403: key 'team-user' may not use admin routes")
        sync_api.expect(page.locator("#nodes-body")).to_contain_text("403")
        page.evaluate("notice('')")  # the page's own helper: so the next 403 is the pin's
        page.get_by_role("button", name=f"Pin {QWEN}", exact=True).click()
        confirm(page)
        notice(page, "^403: key 'team-user' may not use admin routes")
        shot("user-key-refused")

        use_key(page, ADMIN)
        sync_api.expect(status).to_have_text("admin key")
        open_view(page, "fleet")
        sync_api.expect(page.locator('article[data-node="n1"]')).to_contain_text(QWEN)

    errors = await in_browser(scenario, "keys")
    assert neuron_status(neuron, QWEN) == "loaded"  # the user key's unload never happened
    assert gw.fleet.pins == set()  # nor its pin
    assert [e for e in errors if not EXPECTED_REFUSAL.match(e)] == []
    assert errors, "the refusals should have been logged by the browser"
