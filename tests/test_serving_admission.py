"""The lane's per-replica admission (serving/admission.py): a burst gets exactly the capacity,
waiters are served first come first served, and nothing leaks when callers go away."""

from __future__ import annotations

import asyncio

from serving.admission import Admission, Ticket


async def test_a_burst_of_twice_the_capacity_admits_exactly_the_capacity() -> None:
    admission = Admission(max_ongoing=4, max_queued=4)
    tickets = [admission.admit() for _ in range(16)]
    admitted = [t for t in tickets if t is not None]
    assert len(admitted) == 8
    assert tickets[8:] == [None] * 8


async def test_waiters_take_freed_slots_in_arrival_order() -> None:
    admission = Admission(max_ongoing=1, max_queued=2)
    first, second, third = (admission.admit() for _ in range(3))
    assert first is not None
    assert second is not None
    assert third is not None
    await first.slot()
    order: list[str] = []

    async def run(name: str, ticket: Ticket) -> None:
        await ticket.slot()
        order.append(name)
        ticket.release()

    waiting = [asyncio.create_task(run("second", second)), asyncio.create_task(run("third", third))]
    await asyncio.sleep(0)
    assert (admission.running, admission.queued) == (1, 2)
    first.release()
    await asyncio.gather(*waiting)
    assert order == ["second", "third"]
    assert (admission.admitted, admission.running) == (0, 0)


async def test_a_caller_leaving_while_queued_frees_its_place() -> None:
    admission = Admission(max_ongoing=1, max_queued=1)
    holder, queued = admission.admit(), admission.admit()
    assert holder is not None
    assert queued is not None
    await holder.slot()
    wait = asyncio.create_task(queued.slot())
    await asyncio.sleep(0)
    wait.cancel()
    await asyncio.gather(wait, return_exceptions=True)
    queued.release()
    assert admission.admit() is not None  # its place is free again
    holder.release()
    holder.release()  # idempotent
    assert admission.running == 0


async def test_an_unlimited_queue_never_refuses_and_new_limits_apply_at_once() -> None:
    admission = Admission(max_ongoing=2, max_queued=-1)
    assert all(admission.admit() is not None for _ in range(100))
    admission.configure(max_ongoing=2, max_queued=0)
    assert admission.admit() is None
