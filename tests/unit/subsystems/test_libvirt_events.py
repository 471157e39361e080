"""Waiting for block copies to be ready, as libvirt's block job events report them."""

from __future__ import annotations

import threading
import time

import libvirt

from subsystems.libvirt.events import BlockJobs

READY, FAILED = libvirt.VIR_DOMAIN_BLOCK_JOB_READY, libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED


def report_later(jobs: BlockJobs, *events: tuple[str, int]) -> threading.Thread:
    def run() -> None:
        for disk, status in events:
            time.sleep(0.05)
            with jobs.changed:
                jobs.status[disk] = status
                jobs.changed.notify_all()
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_the_wait_ends_when_every_copy_is_ready() -> None:
    jobs = BlockJobs()
    reporter = report_later(jobs, ("vda", READY), ("vdb", READY))
    started = time.monotonic()
    assert jobs.wait_for({"vda", "vdb"}, READY, 10) == {"vda": READY, "vdb": READY}
    assert time.monotonic() - started < 5
    reporter.join()


def test_a_failed_copy_ends_the_wait_at_once() -> None:
    jobs = BlockJobs()
    reporter = report_later(jobs, ("vdb", FAILED))
    started = time.monotonic()
    assert jobs.wait_for({"vda", "vdb"}, READY, 10) == {"vdb": FAILED}
    assert time.monotonic() - started < 5
    reporter.join()


def test_a_copy_that_never_gets_ready_times_out_with_what_was_reported() -> None:
    jobs = BlockJobs()
    reporter = report_later(jobs, ("vda", READY))
    assert jobs.wait_for({"vda", "vdb"}, READY, 0.5) == {"vda": READY}
    reporter.join()
