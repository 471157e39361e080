"""Volume: only table transitions happen; the pool claims the test makes as a kernel would
never go negative or past the pool's total; the store agrees with the live aggregates."""

from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID, uuid4, uuid5

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aggregates.errors import (
    CapacityError,
    DomainRuleError,
    InvalidTransitionError,
    ValidationError,
)
from aggregates.storage_pool import PrimaryStoragePool, StoragePoolState
from aggregates.volume import Volume, VolumeState, VolumeType

from ._support import MACHINE_SETTINGS, assert_roundtrips, attempt

S = VolumeState
GIB = 1 << 30
VM = uuid4()
# CloudStack's volume state machine, written down independently of volume.py:
# action -> (states it may start from, state it lands in; None: decided below)
TABLE: dict[str, tuple[frozenset[VolumeState], VolumeState | None]] = {
    "create": (frozenset({S.ALLOCATED}), S.CREATING),
    "created": (frozenset({S.CREATING}), S.READY),
    "creation_failed": (frozenset({S.CREATING}), S.ALLOCATED),
    "attach": (frozenset({S.READY}), S.ATTACHING),
    "attached": (frozenset({S.ATTACHING}), S.READY),
    "attach_failed": (frozenset({S.ATTACHING}), S.READY),
    "detach": (frozenset({S.READY}), S.READY),
    "resize": (frozenset({S.READY}), S.RESIZING),
    "resized": (frozenset({S.RESIZING}), S.READY),
    "resize_failed": (frozenset({S.RESIZING}), S.READY),
    "migrate": (frozenset({S.READY}), S.MIGRATING),
    "migrated": (frozenset({S.MIGRATING}), S.READY),
    "migration_failed": (frozenset({S.MIGRATING}), S.READY),
    "take_snapshot": (frozenset({S.READY}), S.SNAPSHOTTING),
    "snapshot_taken": (frozenset({S.SNAPSHOTTING}), S.READY),
    "snapshot_failed": (frozenset({S.SNAPSHOTTING}), S.READY),
    "destroy": (frozenset({S.ALLOCATED, S.READY}), S.DESTROY),
    "recover": (frozenset({S.DESTROY}), None),
    "expunge": (frozenset({S.DESTROY}), S.EXPUNGING),
    "expunged": (frozenset({S.EXPUNGING}), S.EXPUNGED),
    "expunge_failed": (frozenset({S.EXPUNGING}), S.DESTROY),
}


@dataclass
class Expected:
    """What the test believes about one volume."""

    state: VolumeState
    size: int
    created: bool = False
    pool: UUID | None = None
    destination: UUID | None = None
    requested: int | None = None
    vm: UUID | None = None


def _call(volume: Volume, action: str, pool_id: UUID, new_size: int) -> Callable[[], object]:
    """The volume command or result report that performs `action`."""
    calls: dict[str, Callable[[], object]] = {
        "create": lambda: volume.create(pool_id),
        "created": lambda: volume.created(f"/{volume.id}"),
        "attach": lambda: volume.attach(VM, 2),
        "resize": lambda: volume.resize(new_size),
        "migrate": lambda: volume.migrate(pool_id),
        "migrated": lambda: volume.migrated(f"/moved/{volume.id}"),
        "take_snapshot": lambda: volume.take_snapshot(uuid4()),
    }
    if action in calls:
        return calls[action]
    if action.endswith("_failed"):
        return lambda: getattr(volume, action)("failed")
    return getattr(volume, action)  # type: ignore[no-any-return]


def claim_id(volume: Volume, pool: PrimaryStoragePool) -> UUID:
    """The claim a volume holds on a pool."""
    return uuid5(volume.id, str(pool.id))


class VolumeMachine(RuleBasedStateMachine):
    """Volumes on two small pools (6 GiB each), driven like the kernel drives them."""

    def __init__(self) -> None:
        super().__init__()
        zone = uuid4()
        self.pools: dict[UUID, PrimaryStoragePool] = {}
        for _ in range(2):
            pool = PrimaryStoragePool.create(
                name=f"p-{uuid4().hex}", zone_id=zone, pool_name="primary",
                uri="nfs://nas/export", capacity_bytes=6 * GIB, storage_overprovisioning=1.0)
            self.pools[pool.id] = pool
        self.pool_up = dict.fromkeys(self.pools, True)
        self.volumes: list[Volume] = []
        self.last: Volume | None = None
        self.expected: dict[UUID, Expected] = {}
        self.claims: dict[UUID, tuple[UUID, int]] = {}  # claim id -> (pool id, bytes)

    @precondition(lambda self: sum(v.state is not S.EXPUNGED for v in self.volumes) < 4)
    @rule(size=st.integers(1, 5))
    def allocate(self, size: int) -> None:
        """A new data disk of random size."""
        volume = Volume.allocate(name="data", account="acme", zone_id=uuid4(),
                                 volume_type=VolumeType.DATADISK, size_bytes=size * GIB)
        self.volumes.append(volume)
        self.expected[volume.id] = Expected(S.ALLOCATED, size * GIB)

    @rule(pool_index=st.integers(0, 1))
    def toggle_pool(self, pool_index: int) -> None:
        """An admin disables or enables a pool."""
        pool = list(self.pools.values())[pool_index]
        up = self.pool_up[pool.id]
        attempt(pool, lambda: pool.change_state(
            StoragePoolState.DISABLED if up else StoragePoolState.UP), None)
        self.pool_up[pool.id] = not up

    def _claim(self, volume: Volume, pool: PrimaryStoragePool, size: int) -> bool:
        """Claim bytes as the kernel would before asking a volume to use them."""
        used = sum(b for p, b in self.claims.values() if p == pool.id)
        expected: type[Exception] | None = None
        if not self.pool_up[pool.id]:
            expected = InvalidTransitionError
        elif used + size > pool.total_bytes:
            expected = CapacityError
        cid = claim_id(volume, pool)
        attempt(pool, lambda: pool.claim(cid, volume.id, size), expected)
        if expected is None:
            self.claims[cid] = (pool.id, size)
        return expected is None

    def _release(self, volume: Volume, pool_id: UUID | None) -> None:
        if pool_id is not None:
            pool = self.pools[pool_id]
            attempt(pool, lambda: pool.release(claim_id(volume, pool)), None)
            del self.claims[claim_id(volume, pool)]

    def _resize_claim(self, volume: Volume, size: int) -> bool:
        model = self.expected[volume.id]
        assert model.pool is not None
        pool = self.pools[model.pool]
        cid = claim_id(volume, pool)
        growth = size - self.claims[cid][1]
        used = sum(b for p, b in self.claims.values() if p == pool.id)
        expected: type[Exception] | None = None
        if growth > 0 and not self.pool_up[pool.id]:
            expected = InvalidTransitionError
        elif used + growth > pool.total_bytes:
            expected = CapacityError
        attempt(pool, lambda: pool.resize_claim(cid, size), expected, events=int(growth != 0))
        if expected is None:
            self.claims[cid] = (pool.id, size)
        return expected is None

    def _pick(self, data: st.DataObject) -> Volume:
        # aggregates are unhashable, so draw positions rather than objects
        return self.volumes[data.draw(st.integers(0, len(self.volumes) - 1), label="volume")]

    def _act(self, data: st.DataObject, volume: Volume, allowed_only: bool) -> None:
        model = self.expected[volume.id]
        choices = [a for a in TABLE if model.state in TABLE[a][0]] if allowed_only else []
        choices = choices or list(TABLE)
        # hypothesis favours the first choice; rotating by version spreads it deterministically
        turn = volume.version % len(choices)
        action = data.draw(st.sampled_from(choices[turn:] + choices[:turn]), label="action")
        # pools in creation order: their ids are random, so sorting them would make the
        # same draws pick different pools from one run to the next
        pool = list(self.pools.values())[data.draw(st.integers(0, 1), label="pool")]
        delta = data.draw(st.integers(-1, 2), label="resize by GiB")
        sources, target = TABLE[action]
        expected: type[Exception] | None = None
        if model.state not in sources:
            expected = InvalidTransitionError
        elif ((action in ("attach", "destroy") and model.vm is not None)
              or (action == "detach" and model.vm is None)
              or (action == "migrate" and pool.id == model.pool)):
            expected = DomainRuleError
        elif action == "resize" and model.size + delta * GIB <= 0:
            expected = ValidationError
        elif action == "resize" and delta <= 0:
            expected = DomainRuleError
        new_size = model.size + delta * GIB
        call = _call(volume, action, pool.id, new_size)
        self.last = volume
        if expected is None:
            if action == "create" and not self._claim(volume, pool, model.size):
                return
            if action == "migrate" and not self._claim(volume, pool, model.size):
                return
            if action == "resize" and not self._resize_claim(volume, new_size):
                return
        attempt(volume, call, expected)
        if expected is None:
            self._follow(volume, model, action, pool.id, new_size)
            model.state = target or (S.READY if model.created else S.ALLOCATED)

    @precondition(lambda self: bool(self.volumes))
    @rule(data=st.data())
    def progress(self, data: st.DataObject) -> None:
        """A few moves the model allows on one volume, so that deep states are reached."""
        volume = self._pick(data)
        for _ in range(data.draw(st.integers(1, 4), label="moves")):
            self._act(data, volume, allowed_only=True)

    @precondition(lambda self: bool(self.volumes))
    @rule(data=st.data())
    def anything(self, data: st.DataObject) -> None:
        """Any move, mostly refused ones."""
        self._act(data, self._pick(data), allowed_only=False)

    def _follow(self, volume: Volume, model: Expected, action: str, pool_id: UUID,
                new_size: int) -> None:
        """The model's and the pools' side of an allowed action."""
        if action == "create":
            model.pool = pool_id
        elif action == "created":
            model.created = True
        elif action == "creation_failed":
            self._release(volume, model.pool)
            model.pool = None
        elif action == "attach":
            model.vm = VM
        elif action in ("attach_failed", "detach"):
            model.vm = None
        elif action == "resize":
            model.requested = new_size
        elif action == "resized":
            assert model.requested is not None
            model.size, model.requested = model.requested, None
        elif action == "resize_failed":
            model.requested = None
            self._resize_claim(volume, model.size)
        elif action == "migrate":
            model.destination = pool_id
        elif action == "migrated":
            self._release(volume, model.pool)
            model.pool, model.destination = model.destination, None
        elif action == "migration_failed":
            self._release(volume, model.destination)
            model.destination = None
        elif action == "expunged":
            self._release(volume, model.pool)

    @precondition(lambda self: bool(self.volumes))
    @rule(data=st.data())
    def save_and_reload(self, data: st.DataObject) -> None:
        """A volume or pool read back from the store equals the live one."""
        aggregates = [*self.volumes, *self.pools.values()]
        assert_roundtrips(aggregates[data.draw(st.integers(0, len(aggregates) - 1))])

    @invariant()
    def refuses_what_the_table_forbids(self) -> None:
        """Every action the table does not allow is refused by the last volume touched."""
        if self.last is not None:
            state = self.expected[self.last.id].state
            for action, (sources, _) in TABLE.items():
                if state not in sources:
                    attempt(self.last, _call(self.last, action, uuid4(), 1 << 40),
                            InvalidTransitionError)

    @invariant()
    def volumes_match_model(self) -> None:
        """Every volume is where the model expects it."""
        for volume in self.volumes:
            model = self.expected[volume.id]
            assert volume.state is model.state
            assert (volume.size_bytes, volume.requested_size_bytes) == (model.size,
                                                                        model.requested)
            assert (volume.pool_id, volume.destination_pool_id) == (model.pool,
                                                                    model.destination)
            assert volume.vm_id == model.vm and (volume.path is not None) == model.created

    @invariant()
    def pool_claims_within_bounds(self) -> None:
        """Pool claims match the model and stay within 0..total."""
        for pool in self.pools.values():
            mine = {c: b for c, (p, b) in self.claims.items() if p == pool.id}
            assert {c: b for c, (_, b) in pool.claims.items()} == mine
            assert 0 <= pool.used_bytes == sum(mine.values()) <= pool.total_bytes
            assert pool.free_bytes >= 0

    def teardown(self) -> None:
        """Every volume and pool still round-trips through the store."""
        for aggregate in [*self.volumes, *self.pools.values()]:
            assert_roundtrips(aggregate)


TestVolumeMachine = VolumeMachine.TestCase
TestVolumeMachine.settings = MACHINE_SETTINGS
