"""The admin web page end to end: headless Chromium (Debian's) drives the page served by the
admin API, over a real platform: PostgreSQL, nats-server, the kernel, every worker, the
projections, the event relay, the NATS command intake (services register through it) and the
ACL service (its login issues the page's token).

Log in, deploy a VM through the form, watch its operation's steps advance to Succeeded (the
page refreshes from the live event stream, never by polling), stop the VM from the VMs table
and see it Stopped.
"""

import asyncio
import contextlib
import os
import re
import shutil
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cloud import prepare, running_cloud, write_inventory

from kernel.bootstrap.migrations import migrate_all
from kernel.settings import Settings

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
        self.cloud: Any = None  # the running kernel (`support.cloud.Cloud`)
        self.context: Any = None  # the admin API's `ApiContext` (its read models)
        self.thread = threading.Thread(target=self._main, name="platform", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as e:
            self.error = e
            self.ready.set()

    async def _run(self) -> None:
        from aiohttp import web

        from gateways.access import Keyring, KeyringAccess, LayeredAccess, keys_path
        from gateways.api.app import make_app
        from gateways.api.context import ApiContext
        from gateways.stream.intake import CommandIntake
        from gateways.stream.relay import EventRelay
        from gateways.web import add_web_routes
        from kernel.bootstrap import command_catalog, open_platform
        from kernel.bootstrap.processes import projection_runners
        from kernel.event_feed import EventFeed
        from projections.catalog import MODELS
        from services.acl.access import AclAccess
        from services.acl.first_admin import ensure_admin_user
        from services.acl.service import AclService

        self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()
        acl = await asyncio.to_thread(AclService.open, self.settings, create_table=True)
        self.password = await asyncio.to_thread(ensure_admin_user, acl)
        async with running_cloud(self.settings) as cloud:
            await prepare(cloud, self.inventory)
            self.cloud = cloud
            platform = await asyncio.to_thread(open_platform, self.settings)
            relay = EventRelay(EventFeed(cloud.app), list(self.settings.nats_urls))
            # Services register over NATS, signed with their own keys from the keyring.
            intake = CommandIntake(command_catalog(platform, cloud.engine), LayeredAccess(
                AclAccess(acl), KeyringAccess(Keyring(keys_path(self.settings)))),
                list(self.settings.nats_urls))
            edge_tasks = [asyncio.create_task(x.run(self.stop)) for x in (relay, intake)]
            await asyncio.wait_for(intake.ready.wait(), 20)
            with projection_runners(self.settings, list(MODELS)) as runners:
                for runner in runners:
                    runner.start()
                context = ApiContext(command_catalog(platform, cloud.engine), AclAccess(acl),
                                     cloud.app, {r.name: r for r in runners},
                                     engine=cloud.engine)
                self.context = context
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
            await asyncio.gather(*edge_tasks)
            platform.close()
        acl.close()

    def on_loop(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        """Run a coroutine on the platform's loop and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

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
    migrate_all(settings)
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


# --------------------------------------------------------------------------- services panel

SERVICE = "billing"
ODD_URL = "javascript://%0Aalert(1)"  # a registrable "URL" the page must not make a link of


class RunningService:
    """A `ServiceRuntime` (registered through the intake, heartbeating into the KV bucket,
    following the admin's switch) run on the platform's loop until the block ends."""

    def __init__(self, platform: Platform) -> None:
        from gateways.service_keys import issue_service_key
        from services.framework import ServiceRuntime, ServiceSpec

        spec = ServiceSpec(name=SERVICE, version="1.2",
                           endpoints={"http": "http://127.0.0.1:8490/billing", "odd": ODD_URL},
                           consumes=("cloudkernel.events.vm.>",),
                           publishes=("billing.invoices",), description="bills for tests")
        self.platform = platform
        self.rt = ServiceRuntime(spec, list(platform.settings.nats_urls),
                                 credentials=issue_service_key(platform.settings, SERVICE),
                                 data_dir=platform.settings.data_dir, heartbeat_seconds=1.0)
        self.halt: asyncio.Event | None = None
        self.running: Any = None

    def __enter__(self) -> "RunningService":
        async def start() -> None:
            self.halt = asyncio.Event()
            await self.rt.start()
            self.running = asyncio.ensure_future(self.rt.run(self.halt))

        self.platform.on_loop(start())
        return self

    def __exit__(self, *exc: Any) -> None:
        async def stop() -> None:
            assert self.halt is not None
            self.halt.set()
            await self.running

        self.platform.on_loop(stop())


def eventually(check: Callable[[], Any], what: str, timeout: float = 15) -> Any:
    """Poll `check` until it returns something true."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout} s: {what}")
        time.sleep(0.1)


def test_services_panel_lists_disables_and_enables(platform: Platform) -> None:
    from aggregates.service import ServiceRegistration, ServiceState

    expect = playwright_sync.expect
    reg_id = ServiceRegistration.create_id(SERVICE)
    app, view = platform.cloud.app, platform.context.view("services")

    def stored() -> Any:
        return app.repository.get(reg_id)

    def registration_events() -> int:
        return len(platform.cloud.ids("service_registration.Registered")) + len(
            app.recorder.select_notifications(start=None, limit=1000, topics=(
                "service_registration.Updated", "service_registration.Enabled",
                "service_registration.Disabled")))

    with RunningService(platform) as first, playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(platform.url + "/")
            assert platform.password is not None
            page.fill("#login-form input[name=username]", USER)
            page.fill("#login-form input[name=password]", platform.password)
            page.click("#login-form button")
            page.click("#nav a[href='#/services']")

            # listed: version, state, endpoints (links only for web URLs), one live instance
            row = page.locator(f"#services tr[data-name={SERVICE}]")
            expect(row.locator(".service-state")).to_have_text("Enabled")
            expect(row).to_contain_text("1.2")
            instance = row.locator(f"tr[data-instance='{first.rt.instance_id}']")
            expect(row.locator("tr[data-instance]")).to_have_count(1)
            expect(instance).to_contain_text(str(os.getpid()))
            expect(instance).to_contain_text(socket.gethostname())
            expect(instance.locator(".heartbeat")).to_have_text(re.compile(r"^\d+\.\d s ago$"))
            expect(row.locator(".endpoints a")).to_have_count(1)
            expect(row.locator(".endpoints a")).to_have_attribute(
                "href", "http://127.0.0.1:8490/billing")
            expect(row.locator(".endpoints")).to_contain_text(ODD_URL)

            # the subjects are collapsed until asked for, and stay open across refreshes
            expect(row.locator("ul.consumes")).to_be_hidden()
            row.locator("details.subjects summary").click()
            expect(row.locator("ul.consumes")).to_have_text("cloudkernel.events.vm.>")
            expect(row.locator("ul.publishes")).to_have_text("billing.invoices")

            # liveness is polled (heartbeats are not events): a second instance with the
            # same description writes no event, yet shows up, and goes when it stops
            before = registration_events()
            with RunningService(platform) as second:
                expect(row.locator("tr[data-instance]")).to_have_count(2, timeout=15_000)
                expect(row.locator(f"tr[data-instance='{second.rt.instance_id}']")
                       ).to_be_visible()
            assert registration_events() == before
            expect(row.locator("tr[data-instance]")).to_have_count(1, timeout=15_000)
            expect(row.locator("ul.consumes")).to_be_visible()

            # a blank reason: the API's refusal is shown and nothing changes
            row.locator("button[data-action=disable]").click()
            row.locator(".disable-form input[name=reason]").fill("   ")
            row.locator("button[data-action=confirm-disable]").click()
            expect(page.locator("#error")).to_contain_text("reason")
            assert stored().state is ServiceState.ENABLED

            # disable with a reason, sent with an Idempotency-Key
            reason = "invoices paused for the audit"
            row.locator(".disable-form input[name=reason]").fill(reason)
            with page.expect_request(lambda r: r.method == "POST" and r.url.endswith(
                    "/v1/commands/service.disable")) as sent:
                row.locator("button[data-action=confirm-disable]").click()
            key = sent.value.all_headers().get("idempotency-key", "")
            assert re.fullmatch(r"[0-9a-f]{32}", key), key
            assert sent.value.response().json()["idempotency_key"] == key
            expect(row.locator(".service-state")).to_have_text("Disabled")
            expect(row.locator(".reason")).to_have_text(reason)
            expect(page.locator("#error")).to_have_text("")
            reg = stored()
            assert (reg.state, reg.disabled_reason) == (ServiceState.DISABLED, reason)
            eventually(lambda: (view.get(reg_id) or {}).get("disabled_reason") == reason,
                       "the read model's row disabled")
            assert view.get(reg_id)["state"] == "Disabled"
            eventually(lambda: not first.rt.enabled, "the service following the switch")
            assert first.rt.disabled_reason == reason
            expect(row.locator("tr[data-instance]")).to_have_count(1)  # still heartbeating

            # enable it again
            row.locator("button[data-action=enable]").click()
            expect(row.locator(".service-state")).to_have_text("Enabled")
            expect(row.locator(".reason")).to_have_count(0)
            expect(row.locator("button[data-action=disable]")).to_be_visible()
            assert stored().state is ServiceState.ENABLED
            eventually(lambda: (view.get(reg_id) or {}).get("state") == "Enabled",
                       "the read model's row enabled")
            eventually(lambda: first.rt.enabled, "the service enabled again")
            expect(page.locator("#error")).to_have_text("")
            assert not errors, errors
        finally:
            browser.close()
