"""Fair admission to a model's queue between tenants (API keys): actors/fair.py and ModelActor.

The actor tests run the real :class:`ModelActor` dispatcher against a fake runner whose jobs end
when the test says so, so the order in which queued requests get the slot is observed exactly.
"""

from __future__ import annotations

import math

import attrs
import pytest
import trio
import trio.testing

from trillama.actors.fair import FairQueue
from trillama.actors.memory import MemoryEstimate, Placement
from trillama.actors.model import LoadOptions, ModelActor, ServerBusy


# ----------------------------------------------------------------------------- FairQueue alone
async def _put_all(queue: FairQueue, nursery: trio.Nursery, items: list[tuple[str, str]]) -> None:
    for tenant, item in items:
        nursery.start_soon(queue.put, tenant, item)
        await trio.testing.wait_all_tasks_blocked()


async def test_round_robin_between_tenants() -> None:
    queue: FairQueue = FairQueue()
    async with trio.open_nursery() as nursery:
        await _put_all(queue, nursery, [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("c", "c1"),
                                        ("b", "b2")])
        got = [await queue.get() for _ in range(6)]
    assert got == ["a1", "b1", "c1", "a2", "b2", "a3"]


async def test_one_tenant_is_fifo() -> None:
    queue: FairQueue = FairQueue()
    async with trio.open_nursery() as nursery:
        await _put_all(queue, nursery, [(None, str(i)) for i in range(5)])
        got = [await queue.get() for _ in range(5)]
    assert got == ["0", "1", "2", "3", "4"]


async def test_cancelled_sender_leaves_and_is_never_handed_over() -> None:
    queue: FairQueue = FairQueue()
    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_put_in_scope, queue, scope, "a", "gone")
        await trio.testing.wait_all_tasks_blocked()
        await _put_all(queue, nursery, [("b", "b1")])
        assert len(queue) == 2
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert len(queue) == 1 and queue.waiting("a") == 0
        assert await queue.get() == "b1"


async def _put_in_scope(queue: FairQueue, scope: trio.CancelScope, tenant: str, item: str) -> None:
    with scope:
        await queue.put(tenant, item)


async def test_reject_and_close_wake_senders_with_errors() -> None:
    queue: FairQueue = FairQueue()
    outcomes: dict[str, str] = {}

    async def put(tenant: str, item: str) -> None:
        try:
            await queue.put(tenant, item, ticket=item)
            outcomes[item] = "taken"
        except ServerBusy:
            outcomes[item] = "rejected"
        except trio.ClosedResourceError:
            outcomes[item] = "closed"

    async with trio.open_nursery() as nursery:
        for tenant, item in (("a", "a1"), ("a", "a2"), ("b", "b1")):
            nursery.start_soon(put, tenant, item)
            await trio.testing.wait_all_tasks_blocked()
        assert queue.reject("a", "a2", ServerBusy("m"))
        assert not queue.reject("a", "a2", ServerBusy("m"))
        assert await queue.get() == "a1"
        queue.close()
    assert outcomes == {"a1": "taken", "a2": "rejected", "b1": "closed"}
    with pytest.raises(trio.ClosedResourceError):
        await queue.put("c", "late")


# ----------------------------------------------------------------------------- the model actor
@attrs.define
class _Handle:
    job_id: str
    channel: trio.MemorySendChannel
    finished: trio.Event = attrs.Factory(trio.Event)

    def cancel(self) -> None:
        self.finished.set()


@attrs.define
class _FakeRunner:
    """Takes jobs like the runner client; each runs until the test finishes it."""

    died: trio.Event = attrs.Factory(trio.Event)
    pid: int = 0
    started: list[str] = attrs.Factory(list)
    handles: list[_Handle] = attrs.Factory(list)

    def submit_job(self, job_id: str, payload: str, channel: trio.MemorySendChannel) -> _Handle:
        self.started.append(payload)
        handle = _Handle(job_id, channel)
        self.handles.append(handle)
        return handle

    def finish_oldest(self) -> None:
        handle = next(h for h in self.handles if not h.finished.is_set())
        handle.channel.close()
        handle.finished.set()


def _actor(num_parallel: int = 1, max_queue: int = 512) -> ModelActor:
    options = LoadOptions(num_ctx=64, num_parallel=num_parallel)
    return ModelActor(key=("m",), name="m:latest", digest="sha256:0", details={}, model_path="/m",
                      options=options, spec=None, estimate=MemoryEstimate(0, 0, 0, 0, 0),  # type: ignore[arg-type]
                      placement=Placement(0, None, 0, 0), max_queue=max_queue, keep_alive=math.inf)


async def _request(actor: ModelActor, tenant: str, payload: str, outcomes: dict[str, str]) -> None:
    try:
        lease = actor.admit(None, tenant)
    except ServerBusy:
        outcomes[payload] = "refused at admission"
        return
    try:
        async with lease.generate(payload) as events:
            async for _ in events:
                pass
        outcomes[payload] = "served"
    except ServerBusy:
        outcomes[payload] = "refused in the queue"
    finally:
        lease.release()


async def test_flooding_key_does_not_starve_another() -> None:
    """Key A queues 100 requests behind a busy slot; key B's one request is next but one."""
    actor, runner = _actor(), _FakeRunner()
    outcomes: dict[str, str] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.serve, runner)
        for i in range(100):
            nursery.start_soon(_request, actor, "A", f"a{i}", outcomes)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(_request, actor, "B", "b", outcomes)
        await trio.testing.wait_all_tasks_blocked()
        while "b" not in runner.started:
            runner.finish_oldest()
            await trio.testing.wait_all_tasks_blocked()
        # a0 held the slot when B arrived; one more of A's went first (A's turn in the ring).
        assert runner.started.index("b") <= 2
        nursery.cancel_scope.cancel()


async def test_full_queue_makes_room_for_a_smaller_tenant() -> None:
    actor, runner = _actor(max_queue=4), _FakeRunner()
    outcomes: dict[str, str] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.serve, runner)
        for i in range(5):  # one running, four queued: full
            nursery.start_soon(_request, actor, "A", f"a{i}", outcomes)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(_request, actor, "A", "a5", outcomes)
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == {"a5": "refused at admission"}  # A alone: the queue bound holds
        nursery.start_soon(_request, actor, "B", "b", outcomes)
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes["a4"] == "refused in the queue"  # A's newest place went to B
        assert "b" not in outcomes
        nursery.start_soon(_request, actor, "C", "c", outcomes)
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes["a3"] == "refused in the queue"
        nursery.start_soon(_request, actor, "B", "b2", outcomes)
        await trio.testing.wait_all_tasks_blocked()
        # A holds 2 (a1, a2), B 1, C 1: B may not push A below B's own share.
        assert outcomes["b2"] == "refused at admission"
        while len(runner.started) < 5:
            runner.finish_oldest()
            await trio.testing.wait_all_tasks_blocked()
        assert runner.started == ["a0", "a1", "b", "c", "a2"]
        nursery.cancel_scope.cancel()
    assert actor.pending == 0
