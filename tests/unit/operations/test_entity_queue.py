"""Entity queues: one owner, FIFO waiters, refusal on demand, and ordered multi-entity admission."""

from uuid import UUID, uuid4

import pytest

from aggregates.base import natural_id
from aggregates.entity_queue import (
    Admission,
    EntityBusyError,
    EntityQueue,
    QueueMismatchError,
    Queues,
    admit,
    release_all,
)
from aggregates.errors import DomainRuleError
from kernel.store.testing import roundtrip


def ids(n: int) -> list[UUID]:
    """n fresh ids, sorted."""
    return sorted(uuid4() for _ in range(n))


def test_a_queue_is_known_by_its_entity() -> None:
    entity = uuid4()
    queue = EntityQueue.open(entity)
    assert queue.id == EntityQueue.create_id(entity) == natural_id("entity_queue", str(entity))
    assert queue.entity_id == entity and queue.owner is None and queue.waiting == []
    assert not queue.is_busy


def test_a_queue_opened_for_an_operation_is_owned_in_one_event() -> None:
    queues: Queues = {}
    op, later, entity = uuid4(), uuid4(), uuid4()
    assert admit(queues, op, [entity]).ready
    queue = queues[entity]
    assert queue.owner == op and queue.version == 1  # Opened with its owner, no Acquired
    assert [type(e).__name__ for e in queue.pending_events] == ["Opened"]
    assert roundtrip(queue) == queue
    assert not admit(queues, later, [entity]).ready and queue.waiting == [later]
    assert release_all(queues, op, [entity]) == (later,) and queue.owner == later


def test_first_comer_owns_the_rest_wait_in_order() -> None:
    a, b, c = uuid4(), uuid4(), uuid4()
    queue = EntityQueue.open(uuid4())
    assert queue.acquire(a)
    assert not queue.acquire(b) and not queue.acquire(c)
    assert queue.owner == a and queue.waiting == [b, c]
    assert queue.holds(a) and queue.is_waiting(b) and queue.is_busy
    version = queue.version
    assert queue.acquire(a) and not queue.acquire(c)  # asking again changes nothing
    assert queue.version == version
    assert roundtrip(queue) == queue
    assert queue.release(a) == b and queue.owner == b and queue.waiting == [c]
    assert queue.release(b) == c
    assert queue.release(c) is None and not queue.is_busy
    assert roundtrip(queue) == queue


def test_a_waiter_can_withdraw_and_a_stranger_release_is_refused() -> None:
    a, b, c = uuid4(), uuid4(), uuid4()
    queue = EntityQueue.open(uuid4())
    queue.acquire(a)
    queue.acquire(b)
    queue.acquire(c)
    assert queue.release(b) is None and queue.waiting == [c]
    version = queue.version
    # A release from an operation the queue does not know means the copy is stale (another
    # process changed the queue): it is never silently ignored.
    for stranger in (uuid4(), b):
        with pytest.raises(QueueMismatchError) as info:
            queue.release(stranger)
        assert info.value.owner == a and info.value.entity_id == queue.entity_id
    assert queue.version == version
    assert queue.release(a) == c


def test_release_all_leaves_alone_the_entities_an_operation_never_reached() -> None:
    queues: dict[UUID, EntityQueue] = {}
    e1, e2, e3 = sorted(uuid4() for _ in range(3))
    holder, waiter = uuid4(), uuid4()
    assert admit(queues, holder, [e2]).ready
    admission = admit(queues, waiter, [e1, e2, e3])
    assert admission.waiting_on == e2 and e3 not in queues
    assert release_all(queues, waiter, [e1, e2, e3], waiting_on=e2) == ()
    assert not queues[e1].is_busy and queues[e2].waiting == [] and queues[e2].holds(holder)
    with pytest.raises(QueueMismatchError):  # it never held e3: no queue, said loudly
        release_all(queues, holder, [e2, e3])


def test_refuse_when_busy_names_entity_and_owner() -> None:
    a, b = uuid4(), uuid4()
    queue = EntityQueue.open(uuid4())
    assert queue.acquire(a, refuse_when_busy=True)
    version = queue.version
    with pytest.raises(EntityBusyError) as info:
        queue.acquire(b, refuse_when_busy=True)
    error = info.value
    assert isinstance(error, DomainRuleError) and queue.version == version
    assert str(queue.entity_id) in str(error) and str(a) in str(error)
    assert error.to_dict() == {"code": "entity_busy", "message": str(error),
                               "entity_id": str(queue.entity_id), "owner_id": str(a),
                               "operation_id": str(b)}


def test_admit_takes_entities_in_sorted_order_and_stops_at_the_first_busy() -> None:
    e1, e2, e3 = ids(3)
    queues: Queues = {}
    first = admit(queues, op1 := uuid4(), [e2])
    assert first.ready and first.owned == (e2,) and set(queues) == {e2}
    second = admit(queues, op2 := uuid4(), [e3, e1, e2])
    assert not second.ready and second.owned == (e1,) and second.waiting_on == e2
    assert e3 not in queues  # not reached yet
    assert queues[e2].waiting == [op2]
    assert admit(queues, op2, [e1, e2, e3]) == second  # again: the same, no events
    promoted = release_all(queues, op1, [e2])
    assert promoted == (op2,) and queues[e2].owner == op2
    third = admit(queues, op2, [e1, e2, e3])
    assert third.ready and third.owned == (e1, e2, e3)
    assert release_all(queues, op2, [e1, e2, e3]) == ()
    assert all(q.owner is None and not q.waiting for q in queues.values())
    for queue in queues.values():
        assert roundtrip(queue) == queue


def test_admit_refusing_changes_no_queue() -> None:
    e1, e2 = ids(2)
    queues: Queues = {}
    owner = uuid4()
    admit(queues, owner, [e2])
    versions = {e: q.version for e, q in queues.items()}
    with pytest.raises(EntityBusyError, match=str(e2)):
        admit(queues, uuid4(), [e1, e2], refuse_when_busy=True)
    assert set(queues) == {e2} and {e: q.version for e, q in queues.items()} == versions
    assert admit(queues, owner, [e2], refuse_when_busy=True).ready  # its own: fine


def test_release_all_withdraws_a_cancelled_waiter_and_keeps_order() -> None:
    e1, e2 = ids(2)
    queues: Queues = {}
    a, b, c = uuid4(), uuid4(), uuid4()
    admit(queues, a, [e2])
    assert admit(queues, b, [e1, e2]).waiting_on == e2  # b holds e1, waits for e2
    assert admit(queues, c, [e1]).waiting_on == e1  # c waits behind b on e1
    assert release_all(queues, b, [e1, e2]) == (c,)  # b cancelled: e1 to c, b leaves e2
    assert queues[e2].waiting == [] and queues[e1].owner == c
    assert admit(queues, c, [e1]).ready


def test_an_operation_without_entities_is_ready() -> None:
    queues: Queues = {}
    assert admit(queues, uuid4(), []).ready and queues == {}


def test_a_mismatch_names_the_queue_the_operation_and_the_owner() -> None:
    entity, owner, stranger = uuid4(), uuid4(), uuid4()
    queue = EntityQueue.open(entity, owner)
    with pytest.raises(QueueMismatchError) as info:
        queue.release(stranger)
    error = info.value
    assert (error.entity_id, error.operation_id, error.owner) == (entity, stranger, owner)
    assert str(error) == (f"operation {stranger} neither owns nor waits for entity {entity} "
                          f"(owner {owner}): this copy of its queue is stale")
    missing = uuid4()
    with pytest.raises(QueueMismatchError) as info:
        release_all({entity: queue}, owner, [entity, missing])
    # it holds `entity`; `missing` has no queue at all, in whichever order they come
    assert (info.value.entity_id, info.value.operation_id, info.value.owner) == (
        missing, owner, None)


def test_admission_names_its_operation_and_a_refusal_names_the_refused_one() -> None:
    e1, e2 = ids(2)
    queues: Queues = {}
    holder, other = uuid4(), uuid4()
    assert admit(queues, holder, [e2]) == Admission(operation_id=holder, owned=(e2,),
                                                    waiting_on=None)
    assert admit(queues, other, [e1, e2]) == Admission(operation_id=other, owned=(e1,),
                                                       waiting_on=e2)
    refused = uuid4()
    with pytest.raises(EntityBusyError) as info:
        admit(queues, refused, [e2], refuse_when_busy=True)
    assert (info.value.entity_id, info.value.owner_id, info.value.operation_id) == (
        e2, holder, refused)
