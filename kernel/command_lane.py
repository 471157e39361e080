"""Group commit of commands: callers that arrive together are saved in one transaction.

The caller that finds no batch running leads one: under the engine's lock it takes every
command waiting (up to MAX_COMMAND_BATCH, its own first) and runs them as one batch. The
others sleep until their outcome is in, or until the leader hands them the next batch. A
finished caller never waits for the engine again, so many callers cost nothing but their wait
(callers that each took the engine's lock in turn made batches of one to three).
"""

import threading
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from kernel.commands import Command, CommandOutcome

MAX_COMMAND_BATCH = 64


class Request:
    """A command waiting for its turn in the engine, and then its outcome."""

    def __init__(self, command: Command, key: str, actor: str) -> None:
        self.command, self.key, self.actor = command, key, actor
        self.wake = threading.Event()  # finished, or promoted to lead the next batch
        self.leads = False
        self.finished = False
        self._outcome: CommandOutcome | None = None
        self._error: BaseException | None = None

    def finish(self, outcome: CommandOutcome | None, error: BaseException | None) -> None:
        """Hand the outcome (or the error) to the waiting caller."""
        self._outcome, self._error = outcome, error
        self.finished = True
        self.wake.set()

    def promote(self) -> None:
        """Make this request's caller run the next batch."""
        self.leads = True
        self.wake.set()

    def outcome(self) -> CommandOutcome:
        """The command's outcome; raises its error."""
        if self._error is not None:
            raise self._error
        assert self._outcome is not None
        return self._outcome


class CommandLane:
    """Leads callers' commands into batches run by `run` while holding `lock`."""

    def __init__(self, run: Callable[[list[Request]], None],
                 lock: AbstractContextManager[Any]) -> None:
        self.run, self.lock = run, lock
        self.requests: deque[Request] = deque()
        self._queue_lock = threading.Lock()
        self._leading = False  # a caller is running a batch

    def execute(self, command: Command, key: str, actor: str) -> CommandOutcome:
        """Run one command in the next batch and return its outcome (or raise its error)."""
        request = Request(command, key, actor)
        with self._queue_lock:
            self.requests.append(request)
            if not self._leading:
                self._leading = True
                request.leads = True
        while not request.finished:
            if not request.leads:
                request.wake.wait()
                continue
            batch: list[Request] = []
            try:
                with self.lock:  # what queues up meanwhile joins the batch
                    with self._queue_lock:  # a leader is always the head of the queue
                        batch = [self.requests.popleft()
                                 for _ in range(min(MAX_COMMAND_BATCH, len(self.requests)))]
                    self.run(batch)
            except BaseException as e:  # interrupted: nobody of this batch may wait forever
                for waiting in batch:
                    if not waiting.finished:
                        waiting.finish(None, e)
                raise
            finally:
                with self._queue_lock:
                    if self.requests:
                        self.requests[0].promote()
                    else:
                        self._leading = False
        return request.outcome()
