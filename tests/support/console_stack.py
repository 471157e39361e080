"""The platform on a real qemu host with the console proxy, as users meet it: the kernel in a
thread with its own loop, each subsystem worker in its own `cloudkernel worker` process (the
hypervisor's with its console desk), the relay, the command intake and the ACL responder, the
admin API with its web page, and the console and EC2 services as `python -m` processes.

Accounts: `acme` (user alice) and `globex` (user bob), each with a password and a SigV4 key;
a root admin `admin` logs in to the web page. One VM of acme's is deployed and boots.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from fixtures.qemu_host import QemuHost

from kernel.settings import Settings, load_settings

from .cloud import ROOT, Cloud, Prepared, prepare, running_cloud, write_inventory
from .guest_image import GuestImage
from .services import free_port, platform_edges


@dataclass
class Tenant:
    """An ACL user of an account, with a password and a SigV4 key."""

    user: str
    account: str
    password: str
    key: tuple[str, str] = ("", "")


class ServiceProcess:
    """`python -m services.<name> --config FILE`, its output kept."""

    def __init__(self, name: str, config: Path, ready_text: str) -> None:
        self.name, self.config, self.ready_text = name, config, ready_text
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def start(self, timeout: float = 60) -> None:
        from gateways.service_keys import issue_service_key

        issue_service_key(load_settings(config_path=self.config), self.name)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("CLOUDKERNEL_CONFIG", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}", "--config", str(self.config)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if self.ready_text in line:
                threading.Thread(target=self._drain, daemon=True).start()
                return
        raise AssertionError(f"services.{self.name} did not start:\n" + "".join(self.output))

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def stop(self) -> int:
        """SIGTERM, as `up` stops it; its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return 0 if self.proc is None else int(self.proc.returncode)
        self.proc.send_signal(signal.SIGTERM)
        try:
            return int(self.proc.wait(30))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"services.{self.name} ignored SIGTERM:\n"
                                 + "".join(self.output)) from None


@dataclass
class ConsoleStack:
    """See the module docstring; `on_loop` runs a coroutine on the stack's loop."""

    tmp_path: Path
    pg_dsn: str
    nats_url: str
    qemu_host: QemuHost
    guest_image: GuestImage
    ticket_seconds: float = 60.0
    extra: dict[str, Any] = field(default_factory=dict)  # more settings
    settings: Settings = field(init=False)
    config: Path = field(init=False)
    admin_url: str = field(init=False, default="")
    admin_password: str = field(init=False, default="")
    tenants: dict[str, Tenant] = field(init=False, default_factory=dict)
    cloud: Cloud | None = field(init=False, default=None)
    ids: Prepared | None = field(init=False, default=None)
    vm_id: UUID | None = field(init=False, default=None)
    services: dict[str, ServiceProcess] = field(init=False, default_factory=dict)
    acl: Any = field(init=False, default=None)  # the stack's AclService, while it runs
    error: BaseException | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        from kernel.bootstrap.migrations import migrate_all

        data = self.tmp_path / "data"
        values = {"store": "postgres", "postgres_dsn": self.pg_dsn,
                  "nats_urls": [self.nats_url], "data_dir": str(data),
                  "api_port": free_port(), "console_port": free_port(),
                  "ec2_port": free_port(), "ec2_region": "ck-test-1",
                  "enduser_port": free_port(),
                  "service_heartbeat_seconds": 0.5, "postgres_pool_size": 2,
                  "console_ticket_seconds": self.ticket_seconds, "log_level": "info",
                  **self.extra}
        self.config = self.tmp_path / "cloudkernel.toml"
        self.config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
        self.settings = load_settings(env={}, config_path=self.config)
        migrate_all(self.settings)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="console-stack", daemon=True)

    # ------------------------------------------------------------------ running

    def __enter__(self) -> ConsoleStack:
        self._thread.start()
        if not self._ready.wait(600) or self.error is not None:
            raise AssertionError(f"the stack did not start: {self.error!r}") from self.error
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(180)
        if self.error is not None and exc[0] is None:
            raise self.error

    def on_loop(self, coro: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
        """Run a coroutine on the stack's loop and wait for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as e:
            self.error = e
        finally:
            self._ready.set()

    async def _run(self) -> None:
        from aiohttp import web

        from gateways.access import Keyring, KeyringAccess, LayeredAccess, keys_path
        from gateways.api.app import make_app
        from gateways.api.context import ApiContext
        from gateways.web import add_web_routes
        from kernel.bootstrap import command_catalog, open_platform
        from kernel.bootstrap.processes import projection_runners
        from kernel.cloud.vms import DeployVm
        from projections.catalog import MODELS
        from services.acl.access import AclAccess
        from services.acl.first_admin import ensure_admin_user
        from services.acl.service import AclService

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        settings = self.settings
        acl = await asyncio.to_thread(AclService.open, settings, create_table=True)
        self.acl = acl
        try:
            password: str | None = await asyncio.to_thread(ensure_admin_user, acl)
            self.admin_password = password or ""
            for user, account in (("alice", "acme"), ("bob", "globex")):
                tenant = Tenant(user, account, f"{user}-password-1")
                await asyncio.to_thread(acl.create_account, account, domain="ROOT")
                await asyncio.to_thread(acl.create_user, user, account=account, role="user",
                                        password=tenant.password)
                key, secret = await asyncio.to_thread(acl.create_key, user)
                tenant.key = (key.key_id, secret)
                self.tenants[user] = tenant
            folder = self.qemu_host.storage_dir / "console"
            folder.mkdir(mode=0o755, exist_ok=True)
            inventory = write_inventory(folder, [self.qemu_host.uri], host_cores=2,
                                        host_memory_mib=4096, vm_cores=1, vm_memory_mib=192,
                                        template_image=self.guest_image.root)
            hypervisor = {"console_secret_file": str(settings.console_secret_path)}
            async with running_cloud(settings, worker_processes=True,
                                     configs={"hypervisor": hypervisor}) as cloud:
                self.cloud = cloud
                self.ids = ids = await prepare(cloud, inventory, cidr="10.1.7.0/24")
                async with platform_edges(settings, cloud, acl=acl):
                    platform = await asyncio.to_thread(open_platform, settings)
                    access = LayeredAccess(AclAccess(acl),
                                           KeyringAccess(Keyring(keys_path(settings))))
                    try:
                        with projection_runners(settings, list(MODELS)) as runners:
                            for runner in runners:
                                runner.start()
                            context = ApiContext(command_catalog(platform, cloud.engine),
                                                 access, cloud.app,
                                                 {r.name: r for r in runners},
                                                 engine=cloud.engine)
                            app = make_app(context)
                            add_web_routes(app, servers=settings.nats_urls, login=acl.login)
                            site = web.AppRunner(app, access_log=None, shutdown_timeout=2)
                            await site.setup()
                            await web.TCPSite(site, settings.api_host, settings.api_port).start()
                            self.admin_url = f"http://{settings.api_host}:{settings.api_port}"
                            try:
                                for name, text in (("console", "console serving"),
                                                   ("ec2", "ec2 serving"),
                                                   ("enduser", "enduser serving")):
                                    self.services[name] = ServiceProcess(name, self.config,
                                                                         text)
                                    await asyncio.to_thread(self.services[name].start)
                                assert ids.network_id is not None
                                deployed = await cloud.command(DeployVm(
                                    name="console-1", account="acme", zone_id=ids.zone_id,
                                    service_offering_id=ids.offering_id,
                                    template_id=ids.template_id,
                                    network_ids=(ids.network_id,)))
                                op = await cloud.finished(deployed["operation_id"], timeout=180)
                                assert op.state.value == "Succeeded", op.state
                                self.vm_id = UUID(deployed["vm_id"])
                                self._ready.set()
                                await self._stop.wait()
                                await self._remove_all(cloud, ids)
                            finally:
                                for service in self.services.values():
                                    await asyncio.to_thread(service.stop)
                                await site.cleanup()
                                for runner in runners:
                                    await asyncio.to_thread(runner.stop)
                    finally:
                        platform.close()
        finally:
            acl.close()

    async def _remove_all(self, cloud: Cloud, ids: Prepared) -> None:
        """Destroy every VM (a timer expunges each) and shut the network down: the host must
        be left as it was found."""
        from aggregates.vm import VirtualMachine, VmState
        from kernel.cloud.networks import ShutdownNetworkCommand
        from kernel.cloud.vms import DestroyVm

        vms = [vm_id for vm_id in cloud.ids("vm.Allocated")]
        for vm_id in vms:
            vm: VirtualMachine = await cloud.get(vm_id)
            if vm.state not in (VmState.DESTROYED, VmState.EXPUNGED):
                done = await cloud.command(DestroyVm(vm_id=vm_id))
                await cloud.finished(done["operation_id"], timeout=120)
        for vm_id in vms:
            for _ in range(600):
                if (await cloud.get(vm_id)).state is VmState.EXPUNGED:
                    break
                await asyncio.sleep(0.1)
        if ids.network_id is not None:
            done = await cloud.command(ShutdownNetworkCommand(network_id=ids.network_id))
            await cloud.finished(done["operation_id"], timeout=120)
