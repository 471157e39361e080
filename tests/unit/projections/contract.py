"""The projections' contract, run on SQLite (unit) and PostgreSQL (integration)."""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from eventsourcing.persistence import IntegrityError, Tracking

from aggregates.operation import Operation
from aggregates.plan import Plan
from kernel.bootstrap.migrations import migrate_all
from kernel.settings import Settings
from kernel.store.application import KernelApplication, PlatformApplication, open_application
from projections.models import OperationModel, RowModel, VmModel
from projections.runner import ProjectionRunner
from projections.views import RowView, open_view

from .scenario import (
    HOST_1,
    HOST_2,
    NOW,
    bulk_vms,
    expected_operation,
    expected_vm,
    new_vm,
    scripted_run,
    step,
    subset,
)

REPO = Path(__file__).resolve().parents[3]
OK_RESULT = msgspec.Raw(b"{}")


class ProjectionContract:
    """Subclasses provide `settings` (a migrated-on-demand store)."""

    @pytest.fixture
    def settings(self) -> Settings:
        raise NotImplementedError

    @pytest.fixture
    def app(self, settings: Settings) -> Iterator[KernelApplication]:
        migrate_all(settings)
        app = open_application(PlatformApplication, settings)
        yield app
        app.close()

    @pytest.fixture
    def views(self, settings: Settings, app: KernelApplication) -> Iterator[dict[str, RowView]]:
        opened = {m.name: open_view(m, settings, create_table=True)
                  for m in (VmModel, OperationModel)}
        yield opened
        for v in opened.values():
            v.close()

    def runner(self, app: KernelApplication, views: dict[str, RowView],
               model: type[RowModel], **kw: Any) -> ProjectionRunner:
        return ProjectionRunner(app, views[model.name], **kw)

    # ------------------------------------------------------------------ rows

    def test_scripted_run_projects_expected_rows(
            self, app: KernelApplication, views: dict[str, RowView]) -> None:
        vms, ops = scripted_run(app)
        for model in (VmModel, OperationModel):
            assert self.runner(app, views, model).run_once() == app.recorder.max_notification_id()
        for vm in vms:
            want = expected_vm(vm)
            assert subset(views["vms"].get(vm.id), want) == want
        for op in ops:
            want = expected_operation(op)
            assert subset(views["operations"].get(op.id), want) == want
        progressing, failing, waiting = (views["operations"].get(o.id) for o in ops)
        assert progressing is not None and failing is not None and waiting is not None
        assert (progressing["state"], progressing["steps_total"], progressing["steps_succeeded"],
                progressing["steps_in_flight"]) == ("Running", 2, 1, 1)
        assert (failing["state"], failing["steps_failed"], failing["steps_in_flight"]) == \
            ("Failed", 1, 0)
        assert failing["finished_at"] is not None
        assert (waiting["state"], waiting["started_at"]) == ("Accepted", None)
        running = views["vms"].get(vms[0].id)
        assert running is not None
        assert (running["state"], running["host_id"], running["power_state"]) == \
            ("Running", HOST_2, "PowerOn")

    def test_queries_filter_and_paginate_by_key(
            self, app: KernelApplication, views: dict[str, RowView]) -> None:
        vms, _ = scripted_run(app)
        self.runner(app, views, VmModel).run_once()
        view = views["vms"]
        assert {r["name"] for r in view.list(account="bob").rows} == {"db-1", "idle-1"}
        assert [r["name"] for r in view.list(state="Running").rows] == ["web-1"]
        assert [r["name"] for r in view.list(host_id=HOST_2).rows] == ["web-1"]
        assert view.list(host_id=HOST_1).rows == []
        assert {r["name"] for r in view.list(host_id=None).rows} == {"db-1", "tmp-1", "idle-1"}
        assert [r["name"] for r in view.list(account="bob", state="Stopped").rows] == ["db-1"]
        seen, after = [], None
        while True:
            page = view.list(limit=3, after=after)
            seen += [r["id"] for r in page.rows]
            if page.next_after is None:
                break
            after = page.next_after
        assert seen == sorted(vm.id for vm in vms)
        with pytest.raises(ValueError, match="cannot filter"):
            view.list(name="web-1")
        ops = views["operations"]
        self.runner(app, views, OperationModel).run_once()
        assert len(ops.list(kind="deploy").rows) == 2
        assert [r["kind"] for r in ops.list(state="Failed").rows] == ["stop"]

    # ------------------------------------------------------------------ exactly once

    def test_same_page_twice_is_refused_and_changes_nothing(
            self, app: KernelApplication, views: dict[str, RowView]) -> None:
        scripted_run(app)
        view = views["operations"]
        notifications = app.recorder.select_notifications(
            start=0, limit=1000, topics=OperationModel.topics(), inclusive_of_start=False)
        page = [(n.id, app.mapper.to_domain_event(n)) for n in notifications]
        tracking = Tracking(app.name, notifications[-1].id)
        assert view.apply_page(page, tracking) == 3
        before = view.all_rows()
        with pytest.raises(IntegrityError):
            view.apply_page(page, tracking)
        with pytest.raises(IntegrityError):  # an older position too
            view.apply_page(page[:1], Tracking(app.name, notifications[0].id))
        assert view.all_rows() == before
        assert view.max_tracking_id(app.name) == notifications[-1].id

    def test_restart_resumes_from_tracking(
            self, settings: Settings, app: KernelApplication,
            views: dict[str, RowView]) -> None:
        vms, _ = scripted_run(app)
        first = self.runner(app, views, VmModel, page_size=2)
        first.step()
        first.step()
        reached = first.position()
        assert 0 < reached < first.head()
        views["vms"].close()
        vm = vms[3]
        vm.start(HOST_1)
        app.save(vm)
        reopened = open_view(VmModel, settings)
        try:
            again = ProjectionRunner(app, reopened, page_size=2)
            assert again.position() == reached
            assert again.run_once() == again.head() - reached
            for v in vms:
                want = expected_vm(v)
                assert subset(reopened.get(v.id), want) == want
            live = reopened.all_rows()
            again.rebuild()
            assert reopened.all_rows() == live
        finally:
            reopened.close()

    # ------------------------------------------------------------------ rebuild, lag, wait

    def test_rebuild_equals_live_and_reports_progress(
            self, app: KernelApplication, views: dict[str, RowView]) -> None:
        scripted_run(app)
        bulk_vms(app, 300)
        runner = self.runner(app, views, VmModel, page_size=100)
        runner.run_once()
        live = views["vms"].all_rows()
        assert len(live) == 304
        seen: list[tuple[int, int]] = []
        report = runner.rebuild(lambda pos, head: seen.append((pos, head)))
        head = runner.head()
        assert views["vms"].all_rows() == live
        assert report.position == head and report.events == head
        assert seen[-1] == (head, head)
        assert [p for p, _ in seen] == sorted(p for p, _ in seen)
        assert len(seen) >= 2

    def test_a_page_read_before_a_rebuild_is_refused_after_it(
            self, settings: Settings, app: KernelApplication,
            views: dict[str, RowView]) -> None:
        # A runner in another process read a page from position p; a rebuild committed
        # meanwhile, already containing that page: applying it now would count it twice.
        progressing, = (o for o in scripted_run(app)[1] if o.kind == "deploy" and o.started_at)
        runner = self.runner(app, views, OperationModel)
        runner.run_once()
        p = runner.position()
        progressing.record_success(progressing.forward_steps()[1].step_id, 1, OK_RESULT, NOW)
        app.save(progressing)
        page = [(n.id, app.mapper.to_domain_event(n))
                for n in app.recorder.select_notifications(start=p, limit=10,
                                                           inclusive_of_start=False)]
        other = open_view(OperationModel, settings)
        try:
            ProjectionRunner(app, other).rebuild()
        finally:
            other.close()
        before = views["operations"].all_rows()
        with pytest.raises(IntegrityError):
            views["operations"].apply_page(page, Tracking(app.name, page[-1][0]), expected=p)
        assert views["operations"].all_rows() == before
        row = views["operations"].get(progressing.id)
        assert row is not None and row["steps_succeeded"] == 2 and row["steps_in_flight"] == 0

    def test_rebuild_while_a_runner_follows_and_writers_write(
            self, settings: Settings, app: KernelApplication,
            views: dict[str, RowView]) -> None:
        bulk_vms(app, 200)
        # A follower that lags (it polls slowly, in small pages) reads pages that straddle
        # the rebuild's target.
        follower = self.runner(app, views, OperationModel, page_size=7, poll_interval=0.03)
        follower.run_once()
        rebuilder_view = open_view(OperationModel, settings)
        rebuilder = ProjectionRunner(app, rebuilder_view, page_size=50)
        stop = threading.Event()

        def write() -> None:
            # Operations keep being dispatched, then finished in a later save: a page applied
            # twice would count a success twice.
            while not stop.is_set():
                ops = []
                for _ in range(10):
                    s = step()
                    op = Operation.accept(kind="deploy", plan=Plan(steps=(s,)), now=NOW)
                    op.start(NOW)
                    op.dispatch(s.step_id, NOW)
                    ops.append((op, s))
                app.save(*(op for op, _ in ops))
                time.sleep(0.002)
                for op, s in ops:
                    op.record_success(s.step_id, 1, OK_RESULT, NOW)
                app.save(*(op for op, _ in ops))

        writer = threading.Thread(target=write)
        try:
            with follower:
                writer.start()
                for _ in range(3):
                    # a slow progress callback keeps the rebuild's transaction open
                    rebuilder.rebuild(lambda *_: time.sleep(0.005))
                    time.sleep(0.05)
                stop.set()
                writer.join()
                follower.wait(runner_head := follower.head(), timeout=30)
            assert follower.position() == runner_head
            live = views["operations"].all_rows()
            assert len(live) == sum(1 for _ in app.recorder.select_notifications(
                start=None, limit=100_000, topics=("operation.Accepted",)))
            assert all((r["steps_succeeded"], r["steps_in_flight"]) == (1, 0) for r in live)
            rebuilder.rebuild()
            assert rebuilder_view.all_rows() == live
        finally:
            stop.set()
            if writer.is_alive():
                writer.join()
            rebuilder_view.close()

    def test_lag_and_wait(self, app: KernelApplication, views: dict[str, RowView]) -> None:
        runner = self.runner(app, views, VmModel)
        assert runner.lag().positions == 0
        vm = new_vm("lagging")
        app.save(vm)
        time.sleep(0.05)
        lag = runner.lag()
        assert lag.positions == 1 and lag.seconds >= 0.04
        with pytest.raises(TimeoutError):
            runner.wait(1, timeout=0.05)
        with runner:
            vm.start(HOST_1)
            recordings = app.save(vm)
            runner.wait(recordings[-1].notification.id, timeout=5)
            row = views["vms"].get(vm.id)
            assert row is not None and row["state"] == "Starting"
            # events of other topics move the position to the head too
            ops_runner = self.runner(app, views, OperationModel)
            ops_runner.run_once()
            assert ops_runner.lag().positions == 0
            assert runner.lag() == type(lag)(2, 2, 0, 0.0)

    # ------------------------------------------------------------------ crash

    def test_sigkilled_runner_resumes_to_a_fresh_rebuild(
            self, settings: Settings, app: KernelApplication, views: dict[str, RowView],
            tmp_path: Path) -> None:
        scripted_run(app)
        bulk_vms(app, 1000)
        head = app.recorder.max_notification_id()
        assert head is not None
        env = {**os.environ, "PYTHONPATH": str(REPO), "CLOUDKERNEL_STORE": settings.store,
               "CLOUDKERNEL_DATA_DIR": str(settings.data_dir),
               "CLOUDKERNEL_POSTGRES_DSN": settings.postgres_dsn,
               "CLOUDKERNEL_POSTGRES_SCHEMA": settings.postgres_schema}
        env.pop("CLOUDKERNEL_CONFIG", None)
        cmd = [sys.executable, "-m", "projections.worker", "vms", "10"]
        view = views["vms"]
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 30
            while (view.max_tracking_id(app.name) or 0) == 0:
                assert proc.poll() is None, "the worker exited"
                assert time.monotonic() < deadline, "the worker applied nothing"
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        killed_at = view.max_tracking_id(app.name) or 0
        assert 0 < killed_at < head
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path)
        try:
            runner = ProjectionRunner(app, view)
            runner.wait(head, timeout=60)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        resumed = view.all_rows()
        assert len(resumed) == 1004
        runner.rebuild()
        assert view.all_rows() == resumed
