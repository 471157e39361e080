"""The admin web page end to end: headless Chromium (Debian's) drives the page served by the
admin API, over a real platform: PostgreSQL, nats-server, the kernel, every worker, the
projections, the event relay and the ACL service (its login issues the page's token).

Log in, deploy a VM through the form, watch its operation's steps advance to Succeeded (the
page refreshes from the live event stream, never by polling), stop the VM from the VMs table
and see it Stopped.
"""

import asyncio
import contextlib
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cloud import prepare, running_cloud, write_inventory

from kernel.settings import Settings
from kernel.store.migrate import migrate

CHROMIUM = "/usr/bin/chromium"
# Records (operation state, forward steps succeeded) each time the operation's page changes.
SNAPSHOTS = """
window.__snapshots = [];
new MutationObserver(() => {
  const state = document.querySelector("#op-state");
  if (!state) return;
  const done = [...document.querySelectorAll("#steps tr[data-phase=forward] .step-status")]
    .filter((s) => s.textContent === "Succeeded").length;
  const last = window.__snapshots[window.__snapshots.length - 1];
  if (!last || last[0] !== state.textContent || last[1] !== done)
    window.__snapshots.push([state.textContent, done]);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""
USER = "admin"  # the first admin `ensure_admin_user` makes, as `up` would

playwright_sync = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"no {CHROMIUM}"),
]


class Platform:
    """The platform and the admin API (with the web page) in a thread with its own loop."""

    def __init__(self, settings: Settings, inventory: Path):
        self.settings, self.inventory = settings, inventory
        self.url = ""
        self.password: str | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._main, name="platform", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as e:
            self.error = e
            self.ready.set()

    async def _run(self) -> None:
        from aiohttp import web

        from gateways.acl.access import AclAccess
        from gateways.acl.service import AclService
        from gateways.api.app import make_app
        from gateways.api.context import ApiContext
        from gateways.cli.projections import projection_runners
        from gateways.stream.relay import EventRelay
        from gateways.web import add_web_routes, ensure_admin_user
        from kernel.bootstrap import command_catalog, open_platform
        from kernel.event_feed import EventFeed
        from projections.catalog import MODELS

        self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()
        acl = await asyncio.to_thread(AclService.open, self.settings, create_table=True)
        self.password = await asyncio.to_thread(ensure_admin_user, acl)
        async with running_cloud(self.settings) as cloud:
            await prepare(cloud, self.inventory)
            platform = await asyncio.to_thread(open_platform, self.settings)
            relay = EventRelay(EventFeed(cloud.app), list(self.settings.nats_urls))
            relay_task = asyncio.create_task(relay.run(self.stop))
            with projection_runners(self.settings, list(MODELS)) as runners:
                for runner in runners:
                    runner.start()
                context = ApiContext(command_catalog(platform, cloud.engine), AclAccess(acl),
                                     cloud.app, {r.name: r for r in runners},
                                     engine=cloud.engine)
                app = make_app(context)
                # The one call `up` makes to mount the page on the API it serves:
                add_web_routes(app, servers=self.settings.nats_urls, login=acl.login)
                site_runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
                await site_runner.setup()
                site = web.TCPSite(site_runner, "127.0.0.1", 0)
                await site.start()
                port = site_runner.addresses[0][1]
                self.url = f"http://127.0.0.1:{port}"
                self.ready.set()
                try:
                    await self.stop.wait()
                finally:
                    await site_runner.cleanup()
                    for runner in runners:
                        await asyncio.to_thread(runner.stop)
            await relay_task
            platform.close()
        acl.close()

    def __enter__(self) -> "Platform":
        self.thread.start()
        if not self.ready.wait(120) or self.error is not None:
            raise AssertionError(f"the platform did not start: {self.error!r}")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.loop is not None and self.stop is not None:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(60)
        if self.error is not None and exc[0] is None:
            raise self.error


@pytest.fixture
def platform(tmp_path: Path, pg_dsn: str, nats_url: str,
             libvirt_host_factory: Callable[..., str]) -> Iterator[Platform]:
    uris = [libvirt_host_factory(f"kvm-{i}", cpus=4, memory_mib=8192) for i in range(2)]
    settings = Settings(store="postgres", postgres_dsn=pg_dsn, nats_urls=(nats_url,),
                        data_dir=tmp_path / "data")
    migrate(settings)
    with Platform(settings, write_inventory(tmp_path, uris)) as running:
        yield running


def test_log_in_deploy_watch_and_stop(platform: Platform) -> None:
    expect = playwright_sync.expect
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.add_init_script(SNAPSHOTS)
            page.goto(platform.url + "/")

            # a wrong password is refused, the right one logs in
            page.fill("#login-form input[name=username]", USER)
            page.fill("#login-form input[name=password]", "wrong password!")
            page.click("#login-form button")
            expect(page.locator("#login-error")).to_contain_text("login refused")
            assert platform.password is not None
            page.fill("#login-form input[name=password]", platform.password)
            page.click("#login-form button")

            # the fleet: a zone, its pod and cluster by name, each host with capacity bars
            expect(page.locator("h2")).to_contain_text("Zone z1")
            expect(page.locator("table.hosts tr[data-id]")).to_have_count(2)
            expect(page.locator("#live")).to_contain_text("live")

            # deploy through the form
            page.click("#nav a[href='#/vms']")
            form = page.locator("#deploy-form")
            expect(form.locator("select[name=template_id] option")).to_have_count(1)
            form.locator("input[name=name]").fill("web-1")
            form.locator("select[name=network_id]").select_option(label="guests 10.1.1.0/24")
            form.locator("button[type=submit]").click()

            # the operation's page: its steps advance live to Succeeded
            expect(page).to_have_url(re.compile(r"#/operations/[0-9a-f-]{36}$"))
            expect(page.locator("#steps tr[data-step]").first).to_be_visible()
            expect(page.locator("#op-state")).to_have_text("Succeeded", timeout=30_000)
            phases = page.locator("#steps tr[data-step]").evaluate_all(
                "rows => rows.map(r => [r.dataset.phase, r.querySelector('.step-status')"
                ".textContent])")
            forward = [status for phase, status in phases if phase == "forward"]
            assert forward and all(s == "Succeeded" for s in forward), phases
            # what the page showed on the way: it opened on an unfinished operation and the
            # live stream (the page never polls) moved it on to Succeeded
            seen = page.evaluate("window.__snapshots")
            assert seen[0][0] != "Succeeded" and seen[-1] == ["Succeeded", len(forward)], seen

            # stop it from the VMs table
            page.click("#nav a[href='#/vms']")
            row = page.locator("#vms tr[data-name='web-1']")
            expect(row.locator(".vm-state")).to_have_text("Running")
            row.locator("button[data-action=stop]").click()
            expect(row.locator(".vm-state")).to_have_text("Stopped", timeout=30_000)
            expect(row.locator("button[data-action=start]")).to_be_visible()

            # its history, as a timeline
            row.locator("a", has_text="history").click()
            timeline = page.locator("#timeline li")
            expect(timeline.first).to_contain_text("vm.Allocated")
            expect(page.locator("#timeline")).to_contain_text("vm.Stopped")

            # the other tables render what the read models hold
            page.click("#nav a[href='#/volumes']")
            expect(page.locator("#volumes tr[data-id]")).to_have_count(1)  # web-1's root disk
            page.click("#nav a[href='#/networks']")
            expect(page.locator("#networks tr[data-id]")).to_contain_text("Implemented")
            page.click("#nav a[href='#/operations']")
            expect(page.locator("#operations")).to_contain_text("vm.stop")
            expect(page.locator("#error")).to_have_text("")
            assert not errors, errors
        finally:
            browser.close()
