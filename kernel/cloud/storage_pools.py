"""What the kernel looks up by kind rather than by id: the primary storage pools."""

import threading
import time
import weakref
from uuid import UUID
from weakref import WeakKeyDictionary

from kernel.store.application import KernelApplication

POOL_TOPIC = "storage_pool.Created"


class Directory:
    """Ids of the entities of a kind, kept current from the log (a topic-filtered read of
    what was appended since the last look)."""

    def __init__(self, app: KernelApplication, topic: str = POOL_TOPIC) -> None:
        # weakly: the shared directories are kept per application, which they must not keep
        # alive (it would then be collected only at exit, after its store is gone)
        self._app, self.topic = weakref.ref(app), topic
        self._position = 0
        self._ids: list[UUID] = []
        self._snapshot: tuple[UUID, ...] = ()
        self._looked_at = float("-inf")
        self._lock = threading.Lock()

    @property
    def app(self) -> KernelApplication:
        """The application whose log this directory reads."""
        app = self._app()
        if app is None:
            raise RuntimeError("the application of this directory is gone")
        return app

    def ids(self, max_age: float = 0.0) -> tuple[UUID, ...]:
        """Every id created so far, in log order; with `max_age`, the ids as of a look at
        most that many seconds ago (two store round trips fewer on a hot path; a caller that
        misses an id looks again with none)."""
        with self._lock:
            now = time.monotonic()
            if now - self._looked_at < max_age:
                return self._snapshot
            head = self.app.recorder.max_notification_id() or 0
            while self._position < head:
                notes = self.app.recorder.select_notifications(
                    start=self._position, limit=1000, stop=head, topics=(self.topic,),
                    inclusive_of_start=False)
                self._ids.extend(UUID(str(n.originator_id)) for n in notes)
                # only what was appended since: the next look starts at the head seen now
                self._position = notes[-1].id if len(notes) == 1000 else head
            if len(self._ids) != len(self._snapshot):
                self._snapshot = tuple(self._ids)
            self._looked_at = now
            return self._snapshot


_directories: "WeakKeyDictionary[KernelApplication, dict[str, Directory]]" = \
    WeakKeyDictionary()
_directories_lock = threading.Lock()


def directory(app: KernelApplication, topic: str = POOL_TOPIC) -> Directory:
    """The application's directory of one entity kind, shared, so it reads only what is new."""
    with _directories_lock:
        found = _directories.setdefault(app, {})
        if topic not in found:
            found[topic] = Directory(app, topic)
        return found[topic]
