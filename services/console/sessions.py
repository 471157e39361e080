"""The console sessions one proxy holds: a limit per user, and ending every session of a VM
when the VM stops, moves or goes (its events say so)."""

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from uuid import UUID

from services.console.refusals import Refusal

# VM events after which its console is gone, and what the user reads then
ENDING_EVENTS = {
    "vm.Stopped": "the VM stopped; this console is closed",
    "vm.StoppedOutOfBand": "the VM stopped; this console is closed",
    "vm.Migrated": "the VM moved to another host; open a new console",
    "vm.Destroyed": "the VM was destroyed; this console is closed",
    "vm.Expunged": "the VM was destroyed; this console is closed",
    "vm.Failed": "the VM failed; this console is closed",
}


@dataclass(eq=False)
class Session:
    """One open console: whose, of which VM, and why it ended (once it did)."""

    vm_id: UUID
    user: str
    kind: str
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""

    def end(self, reason: str) -> None:
        """End the session, saying why (the first reason stays)."""
        if not self.ended.is_set():
            self.reason = reason
            self.ended.set()


class Sessions:
    """The open sessions, by VM and by user."""

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._by_vm: dict[UUID, set[Session]] = {}
        self._per_user: Counter[str] = Counter()

    def __len__(self) -> int:
        return sum(self._per_user.values())

    def open(self, vm_id: UUID, user: str, kind: str) -> Session:
        """A new session, unless the user already holds the most allowed."""
        if self._per_user[user] >= self.per_user:
            raise Refusal("busy", f"you have {self._per_user[user]} console sessions open, "
                                  f"the most allowed; close one and open a new link")
        session = Session(vm_id, user, kind)
        self._by_vm.setdefault(vm_id, set()).add(session)
        self._per_user[user] += 1
        return session

    def close(self, session: Session) -> None:
        """Forget a session that ended."""
        held = self._by_vm.get(session.vm_id)
        if held is None or session not in held:
            return
        held.discard(session)
        if not held:
            del self._by_vm[session.vm_id]
        self._per_user[session.user] -= 1
        if self._per_user[session.user] <= 0:
            del self._per_user[session.user]

    def end_vm(self, vm_id: UUID, reason: str) -> int:
        """End every session of a VM; how many there were."""
        held = list(self._by_vm.get(vm_id, ()))
        for session in held:
            session.end(reason)
        return len(held)

    def end_all(self, reason: str) -> None:
        """End every session (the proxy is stopping)."""
        for held in list(self._by_vm.values()):
            for session in list(held):
                session.end(reason)
