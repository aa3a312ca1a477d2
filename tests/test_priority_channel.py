"""The priority channel: Trio memory-channel semantics, highest priority first."""

from __future__ import annotations

import doctest
import math
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_jobs import JobPriority, _priority_channel
from trio_jobs._priority_channel import (
    PriorityChannelStatistics,
    PriorityReceiveChannel,
    PrioritySendChannel,
    open_priority_channel,
)


def drain(receive_channel: PriorityReceiveChannel[Any]) -> list[Any]:
    items = []
    while True:
        try:
            items.append(receive_channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return items


async def wait_parked() -> None:
    await trio.testing.wait_all_tasks_blocked()


# --- ordering ---------------------------------------------------------------------


async def test_higher_priority_is_received_first() -> None:
    send_channel, receive_channel = open_priority_channel()
    for name, priority in [("low", 0), ("critical", 3), ("normal", 1), ("high", 2)]:
        await send_channel.send(name, priority=priority)
    assert [await receive_channel.receive() for _ in range(4)] == [
        "critical",
        "high",
        "normal",
        "low",
    ]


async def test_job_priority_enum_orders_like_its_values() -> None:
    send_channel, receive_channel = open_priority_channel()
    send_channel.send_nowait("low", JobPriority.LOW)
    send_channel.send_nowait("critical", JobPriority.CRITICAL)
    assert receive_channel.peek_priority() is JobPriority.CRITICAL
    assert drain(receive_channel) == ["critical", "low"]


async def test_equal_priorities_are_fifo() -> None:
    send_channel, receive_channel = open_priority_channel()
    for i in range(50):
        send_channel.send_nowait(i, priority=i % 2)
    assert drain(receive_channel) == [i for i in range(50) if i % 2] + [
        i for i in range(50) if not i % 2
    ]


async def test_default_priority_is_zero() -> None:
    send_channel, receive_channel = open_priority_channel()
    send_channel.send_nowait("default")
    send_channel.send_nowait("negative", priority=-1)
    send_channel.send_nowait("one", priority=1)
    assert drain(receive_channel) == ["one", "default", "negative"]


async def test_values_need_not_be_orderable() -> None:
    send_channel, receive_channel = open_priority_channel()
    for i in range(10):
        send_channel.send_nowait({"i": i}, priority=1)
    assert drain(receive_channel) == [{"i": i} for i in range(10)]


async def test_peek_priority_reports_the_best_without_taking_it() -> None:
    send_channel, receive_channel = open_priority_channel()
    assert receive_channel.peek_priority() is None
    send_channel.send_nowait("a", priority=1)
    send_channel.send_nowait("b", priority=2)
    assert receive_channel.peek_priority() == 2
    assert receive_channel.peek_priority() == 2
    assert len(receive_channel) == 2
    assert receive_channel.receive_nowait() == "b"
    assert receive_channel.peek_priority() == 1


# --- blocking and waking ----------------------------------------------------------


async def test_blocked_receive_is_woken_by_a_send(autojump_clock: trio.abc.Clock) -> None:
    send_channel, receive_channel = open_priority_channel()
    got: list[tuple[str, float]] = []

    async def receiver() -> None:
        got.append((await receive_channel.receive(), trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        await trio.sleep(5)
        assert receive_channel.statistics().tasks_waiting_receive == 1
        await send_channel.send("hello", priority=1)
    assert got == [("hello", 5.0)]
    assert receive_channel.statistics().tasks_waiting_receive == 0


async def test_parked_receivers_are_served_in_arrival_order() -> None:
    send_channel, receive_channel = open_priority_channel()
    got: dict[int, str] = {}

    async def receiver(n: int) -> None:
        got[n] = await receive_channel.receive()

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(receiver, n)
            await wait_parked()
        # A parked receiver takes the next item sent, whatever its priority: the
        # buffer was empty when it began to wait.
        send_channel.send_nowait("low", priority=0)
        send_channel.send_nowait("critical", priority=3)
        send_channel.send_nowait("normal", priority=1)
        assert len(receive_channel) == 0
    assert got == {0: "low", 1: "critical", 2: "normal"}


async def test_bounded_buffer_raises_would_block_when_full() -> None:
    send_channel, receive_channel = open_priority_channel(2)
    send_channel.send_nowait(1)
    send_channel.send_nowait(2)
    with pytest.raises(trio.WouldBlock):
        send_channel.send_nowait(3, priority=3)
    assert receive_channel.statistics().current_buffer_used == 2
    assert receive_channel.receive_nowait() == 1
    send_channel.send_nowait(3, priority=3)
    assert drain(receive_channel) == [3, 2]


async def test_send_blocks_while_the_buffer_is_full(autojump_clock: trio.abc.Clock) -> None:
    send_channel, receive_channel = open_priority_channel(1)
    sent_at: list[float] = []

    async def sender() -> None:
        await send_channel.send("first")
        await send_channel.send("second")
        sent_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.sleep(3)
        assert sent_at == []
        assert send_channel.statistics().tasks_waiting_send == 1
        assert await receive_channel.receive() == "first"
    assert sent_at == [3.0]
    assert drain(receive_channel) == ["second"]


async def test_a_blocked_senders_item_competes_when_a_slot_frees() -> None:
    send_channel, receive_channel = open_priority_channel(1)
    send_channel.send_nowait("low", priority=0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_channel.send, "critical", 3)
        await wait_parked()
        assert receive_channel.peek_priority() == 3
        assert receive_channel.receive_nowait() == "critical"
    assert drain(receive_channel) == ["low"]


async def test_blocked_senders_enter_the_buffer_in_arrival_order() -> None:
    send_channel, receive_channel = open_priority_channel(1)
    send_channel.send_nowait("buffered", priority=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_channel.send, "first-waiter", 0)
        await wait_parked()
        nursery.start_soon(send_channel.send, "second-waiter", 3)
        await wait_parked()
        # The first waiter enters as "buffered" leaves; the second still waits.
        assert receive_channel.receive_nowait() == "buffered"
        assert receive_channel.statistics().tasks_waiting_send == 1
        assert receive_channel.receive_nowait() == "second-waiter"
        assert receive_channel.receive_nowait() == "first-waiter"


async def test_unbuffered_channel_is_a_rendezvous() -> None:
    send_channel, receive_channel = open_priority_channel(0)
    with pytest.raises(trio.WouldBlock):
        send_channel.send_nowait("nobody is listening")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_channel.send, "handed over", 2)
        await wait_parked()
        assert len(receive_channel) == 0
        assert receive_channel.peek_priority() == 2
        assert await receive_channel.receive() == "handed over"


# --- closing ----------------------------------------------------------------------


async def test_receivers_drain_the_buffer_then_see_end_of_channel() -> None:
    send_channel, receive_channel = open_priority_channel()
    send_channel.send_nowait(1, priority=0)
    send_channel.send_nowait(2, priority=1)
    await send_channel.aclose()
    assert await receive_channel.receive() == 2
    assert receive_channel.receive_nowait() == 1
    with pytest.raises(trio.EndOfChannel):
        receive_channel.receive_nowait()
    with pytest.raises(trio.EndOfChannel):
        await receive_channel.receive()


async def test_closing_the_last_sender_wakes_parked_receivers() -> None:
    send_channel, receive_channel = open_priority_channel()
    ended = 0

    async def receiver() -> None:
        nonlocal ended
        with pytest.raises(trio.EndOfChannel):
            await receive_channel.receive()
        ended += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        nursery.start_soon(receiver)
        await wait_parked()
        send_channel.close()
    assert ended == 2


async def test_send_after_every_receiver_closed_is_broken() -> None:
    send_channel, receive_channel = open_priority_channel()
    send_channel.send_nowait(1)
    receive_channel.close()
    assert send_channel.statistics().current_buffer_used == 0
    with pytest.raises(trio.BrokenResourceError):
        send_channel.send_nowait(2)
    with pytest.raises(trio.BrokenResourceError):
        await send_channel.send(2)


async def test_closing_the_last_receiver_breaks_blocked_senders() -> None:
    send_channel, receive_channel = open_priority_channel(0)

    async def sender() -> None:
        with pytest.raises(trio.BrokenResourceError):
            await send_channel.send(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await wait_parked()
        await receive_channel.aclose()
    assert send_channel.statistics().tasks_waiting_send == 0


async def test_a_closed_endpoint_refuses_every_operation() -> None:
    send_channel, receive_channel = open_priority_channel()
    send_channel.send_nowait(1)
    extra_sender = send_channel.clone()
    send_channel.close()
    send_channel.close()  # harmless twice
    with pytest.raises(trio.ClosedResourceError):
        send_channel.send_nowait(2)
    with pytest.raises(trio.ClosedResourceError):
        await send_channel.send(2)
    with pytest.raises(trio.ClosedResourceError):
        send_channel.clone()

    receive_channel.close()
    receive_channel.close()
    with pytest.raises(trio.ClosedResourceError):
        receive_channel.receive_nowait()
    with pytest.raises(trio.ClosedResourceError):
        await receive_channel.receive()
    with pytest.raises(trio.ClosedResourceError):
        receive_channel.clone()
    with pytest.raises(trio.ClosedResourceError):
        receive_channel.peek_priority()
    extra_sender.close()


async def test_closing_an_endpoint_interrupts_only_its_own_waiters() -> None:
    send_channel, receive_channel = open_priority_channel(0)
    other_sender = send_channel.clone()
    outcomes: dict[str, str] = {}

    async def sender(channel: PrioritySendChannel[str], name: str) -> None:
        try:
            await channel.send(name)
        except trio.ClosedResourceError:
            outcomes[name] = "closed"
        else:
            outcomes[name] = "sent"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, send_channel, "mine")
        nursery.start_soon(sender, other_sender, "clone's")
        await wait_parked()
        send_channel.close()
        await wait_parked()
        assert outcomes == {"mine": "closed"}
        assert receive_channel.receive_nowait() == "clone's"
    assert outcomes == {"mine": "closed", "clone's": "sent"}

    receive_clone = receive_channel.clone()

    async def receiver(channel: PriorityReceiveChannel[str], name: str) -> None:
        try:
            outcomes[name] = await channel.receive()
        except trio.ClosedResourceError:
            outcomes[name] = "closed"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver, receive_channel, "receiver")
        nursery.start_soon(receiver, receive_clone, "clone receiver")
        await wait_parked()
        receive_channel.close()
        await wait_parked()
        other_sender.send_nowait("late")
    assert outcomes["receiver"] == "closed"
    assert outcomes["clone receiver"] == "late"


# --- clones, iteration, context managers -----------------------------------------


async def test_the_channel_ends_only_when_every_sender_clone_is_closed() -> None:
    send_channel, receive_channel = open_priority_channel()
    clone = send_channel.clone()
    assert receive_channel.statistics().open_send_channels == 2
    send_channel.close()
    with pytest.raises(trio.WouldBlock):
        receive_channel.receive_nowait()
    clone.send_nowait("from the clone")
    clone.close()
    assert receive_channel.receive_nowait() == "from the clone"
    with pytest.raises(trio.EndOfChannel):
        receive_channel.receive_nowait()


async def test_receiver_clones_share_one_buffer() -> None:
    send_channel, receive_channel = open_priority_channel()
    clone = receive_channel.clone()
    for i in range(4):
        send_channel.send_nowait(i, priority=i)
    assert [receive_channel.receive_nowait(), clone.receive_nowait()] == [3, 2]
    assert len(receive_channel) == len(clone) == 2
    receive_channel.close()
    send_channel.send_nowait(9)  # a clone is still open: not broken
    assert drain(clone) == [1, 0, 9]


async def test_producers_and_consumers_with_clones_lose_nothing() -> None:
    send_channel, receive_channel = open_priority_channel(3)
    received: list[int] = []

    async def producer(channel: PrioritySendChannel[int], start: int) -> None:
        async with channel:
            for i in range(start, start + 100):
                await channel.send(i, priority=i % 4)

    async def consumer(channel: PriorityReceiveChannel[int]) -> None:
        async with channel:
            async for item in channel:
                received.append(item)

    async with trio.open_nursery() as nursery, send_channel, receive_channel:
        for k in range(3):
            nursery.start_soon(producer, send_channel.clone(), k * 100)
            nursery.start_soon(consumer, receive_channel.clone())
    assert sorted(received) == list(range(300))


async def test_async_for_yields_in_priority_order_until_the_end() -> None:
    send_channel, receive_channel = open_priority_channel()
    with send_channel:
        send_channel.send_nowait("b", priority=1)
        send_channel.send_nowait("c", priority=0)
        send_channel.send_nowait("a", priority=2)
    assert [item async for item in receive_channel] == ["a", "b", "c"]


async def test_context_managers_close_the_endpoint() -> None:
    send_channel, receive_channel = open_priority_channel()
    with send_channel:
        pass
    async with receive_channel:
        pass
    stats = receive_channel.statistics()
    assert (stats.open_send_channels, stats.open_receive_channels) == (0, 0)
    with pytest.raises(trio.ClosedResourceError):
        send_channel.send_nowait(1)
    with pytest.raises(trio.ClosedResourceError):
        receive_channel.receive_nowait()


# --- statistics, len, construction -----------------------------------------------


async def test_statistics_is_a_frozen_snapshot() -> None:
    send_channel, receive_channel = open_priority_channel(5)
    send_channel.send_nowait(1)
    receive_channel.clone()
    stats = send_channel.statistics()
    assert stats == PriorityChannelStatistics(
        current_buffer_used=1,
        max_buffer_size=5,
        open_send_channels=1,
        open_receive_channels=2,
        tasks_waiting_send=0,
        tasks_waiting_receive=0,
    )
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.current_buffer_used = 3  # type: ignore[misc]
    send_channel.send_nowait(2)
    assert stats.current_buffer_used == 1
    assert receive_channel.statistics().max_buffer_size == 5


async def test_len_counts_buffered_items_and_an_empty_endpoint_is_still_true() -> None:
    send_channel, receive_channel = open_priority_channel()
    assert len(receive_channel) == 0
    assert receive_channel
    send_channel.send_nowait(1)
    send_channel.send_nowait(2)
    assert len(receive_channel) == 2


def test_default_buffer_is_unbounded() -> None:
    send_channel, receive_channel = open_priority_channel()
    assert receive_channel.statistics().max_buffer_size == math.inf
    for i in range(10_000):
        send_channel.send_nowait(i)
    assert len(receive_channel) == 10_000


@pytest.mark.parametrize(
    ("size", "error"),
    [(-1, ValueError), (1.5, TypeError), ("3", TypeError), (True, TypeError)],
)
def test_invalid_buffer_sizes_are_rejected(size: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_buffer_size"):
        open_priority_channel(size)


# --- cancellation and checkpoints ------------------------------------------------


async def test_cancelled_receive_takes_nothing(autojump_clock: trio.abc.Clock) -> None:
    send_channel, receive_channel = open_priority_channel()
    with trio.move_on_after(1):
        await receive_channel.receive()
    assert receive_channel.statistics().tasks_waiting_receive == 0
    send_channel.send_nowait("kept")
    with trio.CancelScope() as scope:
        scope.cancel()
        await receive_channel.receive()
    assert drain(receive_channel) == ["kept"]


async def test_cancelled_send_sends_nothing(autojump_clock: trio.abc.Clock) -> None:
    send_channel, receive_channel = open_priority_channel(1)
    send_channel.send_nowait("buffered")
    with trio.move_on_after(1):
        await send_channel.send("abandoned", priority=3)
    assert send_channel.statistics().tasks_waiting_send == 0
    with trio.CancelScope() as scope:
        scope.cancel()
        await send_channel.send("also abandoned")
    assert drain(receive_channel) == ["buffered"]
    send_channel.send_nowait("next")
    assert drain(receive_channel) == ["next"]


async def test_receiver_cancelled_after_the_hand_off_keeps_its_item() -> None:
    send_channel, receive_channel = open_priority_channel()
    got: list[str] = []

    async def receiver(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            got.append(await receive_channel.receive())

    async with trio.open_nursery() as nursery:
        scope = await nursery.start(receiver)
        await wait_parked()
        # The item is handed over, then the receiver is cancelled before it runs:
        # it must still get the item rather than lose it.
        send_channel.send_nowait("item")
        scope.cancel()
    assert got == ["item"]
    assert len(receive_channel) == 0


async def test_sender_cancelled_after_its_item_was_taken_counts_as_sent() -> None:
    send_channel, receive_channel = open_priority_channel(0)
    finished: list[str] = []

    async def sender(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await send_channel.send("item")
            finished.append("returned")

    async with trio.open_nursery() as nursery:
        scope = await nursery.start(sender)
        await wait_parked()
        assert receive_channel.receive_nowait() == "item"
        scope.cancel()
    assert finished == ["returned"]


async def test_send_and_receive_always_checkpoint() -> None:
    send_channel, receive_channel = open_priority_channel()
    with trio.testing.assert_checkpoints():
        await send_channel.send(1, priority=2)
    with trio.testing.assert_checkpoints():
        assert await receive_channel.receive() == 1
    clone = send_channel.clone()
    with trio.testing.assert_checkpoints():
        await clone.aclose()
    with trio.testing.assert_checkpoints():
        await receive_channel.aclose()


async def test_nowait_methods_and_close_never_checkpoint() -> None:
    send_channel, receive_channel = open_priority_channel()
    with trio.testing.assert_no_checkpoints():
        send_channel.send_nowait(1)
        receive_channel.peek_priority()
        receive_channel.receive_nowait()
        send_channel.close()
        receive_channel.close()


def test_docstring_examples_run() -> None:
    result = doctest.testmod(_priority_channel, raise_on_error=False)
    assert result.attempted > 0
    assert result.failed == 0


# --- against a model --------------------------------------------------------------


@attrs.define
class Model:
    """The documented semantics, stated naively: a sorted list and two FIFO queues."""

    max_buffer_size: float
    buffer: list[tuple[int, int, int]] = attrs.Factory(list)  # (-priority, seq, value)
    blocked_senders: list[tuple[int, int, int]] = attrs.Factory(list)
    parked_receivers: list[int] = attrs.Factory(list)  # receiver ids
    seq: int = 0

    def entry(self, priority: int, value: int) -> tuple[int, int, int]:
        self.seq += 1
        return (-priority, self.seq, value)

    def send(self, priority: int, value: int, *, block: bool) -> str | int:
        """Return "buffered", "blocked", "would block", or the receiver id handed to."""
        if self.parked_receivers:
            return self.parked_receivers.pop(0)
        if len(self.buffer) < self.max_buffer_size:
            self.buffer.append(self.entry(priority, value))
            self.buffer.sort()
            return "buffered"
        if not block:
            return "would block"
        self.blocked_senders.append(self.entry(priority, value))
        return "blocked"

    def receive(self) -> int | None:
        if self.blocked_senders:
            self.buffer.append(self.blocked_senders.pop(0))
            self.buffer.sort()
        if self.buffer:
            return self.buffer.pop(0)[2]
        return None

    def best_priority(self) -> int | None:
        candidates = self.buffer + self.blocked_senders[:1]
        return -min(candidates)[0] if candidates else None


operations = st.lists(
    st.one_of(
        st.tuples(st.just("send_nowait"), st.integers(0, 3)),
        st.tuples(st.just("send"), st.integers(0, 3)),
        st.tuples(st.just("receive_nowait"), st.none()),
        st.tuples(st.just("receive"), st.none()),
        st.tuples(st.just("cancel_sender"), st.integers(0, 5)),
        st.tuples(st.just("cancel_receiver"), st.integers(0, 5)),
    ),
    max_size=60,
)


@settings(deadline=None, max_examples=150)
@given(ops=operations, max_buffer_size=st.sampled_from([0, 1, 2, 5, math.inf]))
async def test_matches_a_sorted_list_model(
    ops: list[tuple[str, int | None]], max_buffer_size: float
) -> None:
    send_channel, receive_channel = open_priority_channel(max_buffer_size)
    model = Model(max_buffer_size)
    received: list[int] = []  # everything any receiver got, in order of receipt
    expected_received: list[int] = []
    receiver_results: dict[int, list[int]] = {}
    sender_scopes: list[trio.CancelScope] = []  # blocked senders, in arrival order
    receiver_scopes: list[tuple[int, trio.CancelScope]] = []  # parked, in arrival order
    next_value = 0
    next_receiver_id = 0

    async def blocking_sender(
        value: int, priority: int, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await send_channel.send(value, priority)

    async def blocking_receiver(
        receiver_id: int, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            value = await receive_channel.receive()
            receiver_results[receiver_id] = [value]
            received.append(value)

    async with trio.open_nursery() as nursery:
        for op, arg in ops:
            if op in ("send_nowait", "send"):
                assert arg is not None
                value, next_value = next_value, next_value + 1
                outcome = model.send(arg, value, block=op == "send")
                if isinstance(outcome, int):
                    expected_received.append(value)
                if op == "send_nowait":
                    if outcome == "would block":
                        with pytest.raises(trio.WouldBlock):
                            send_channel.send_nowait(value, arg)
                    else:
                        send_channel.send_nowait(value, arg)
                else:
                    scope = await nursery.start(blocking_sender, value, arg)
                    if outcome == "blocked":
                        sender_scopes.append(scope)
                await wait_parked()
                if isinstance(outcome, int):
                    receiver_scopes = [(r, s) for r, s in receiver_scopes if r != outcome]
                    assert receiver_results[outcome] == [value]
            elif op in ("receive_nowait", "receive"):
                want = model.receive()
                if want is not None:
                    # a blocked sender may have been admitted: it is no longer blocked
                    if len(sender_scopes) > len(model.blocked_senders):
                        sender_scopes.pop(0)
                    expected_received.append(want)
                if op == "receive_nowait":
                    if want is None:
                        with pytest.raises(trio.WouldBlock):
                            receive_channel.receive_nowait()
                    else:
                        value = receive_channel.receive_nowait()
                        received.append(value)
                        assert value == want
                else:
                    receiver_id, next_receiver_id = next_receiver_id, next_receiver_id + 1
                    scope = await nursery.start(blocking_receiver, receiver_id)
                    await wait_parked()
                    if want is None:
                        model.parked_receivers.append(receiver_id)
                        receiver_scopes.append((receiver_id, scope))
                    else:
                        assert receiver_results[receiver_id] == [want]
            elif op == "cancel_sender" and sender_scopes:
                assert arg is not None
                index = arg % len(sender_scopes)
                sender_scopes.pop(index).cancel()
                del model.blocked_senders[index]
                await wait_parked()
            elif op == "cancel_receiver" and receiver_scopes:
                assert arg is not None
                index = arg % len(receiver_scopes)
                receiver_id, scope = receiver_scopes.pop(index)
                scope.cancel()
                model.parked_receivers.remove(receiver_id)
                await wait_parked()

            stats = receive_channel.statistics()
            assert stats.current_buffer_used == len(model.buffer) == len(receive_channel)
            assert stats.tasks_waiting_send == len(model.blocked_senders)
            assert stats.tasks_waiting_receive == len(model.parked_receivers)
            assert receive_channel.peek_priority() == model.best_priority()
            assert received == expected_received

        # Drain: every item accepted is received exactly once, in the model's order.
        for _, scope in receiver_scopes:
            scope.cancel()
        model.parked_receivers.clear()
        remaining = []
        while (want := model.receive()) is not None:
            remaining.append(want)
        assert drain(receive_channel) == remaining
        send_channel.close()
        with pytest.raises(trio.EndOfChannel):
            receive_channel.receive_nowait()


async def test_peek_returns_the_best_item_without_taking_it() -> None:
    send_channel: PrioritySendChannel[str]
    receive_channel: PriorityReceiveChannel[str]
    send_channel, receive_channel = open_priority_channel()
    with pytest.raises(trio.WouldBlock):
        receive_channel.peek()
    send_channel.send_nowait("low", priority=0)
    send_channel.send_nowait("high-1", priority=2)
    send_channel.send_nowait("high-2", priority=2)
    assert receive_channel.peek() == "high-1"
    assert len(receive_channel) == 3
    assert receive_channel.receive_nowait() == "high-1"
    assert receive_channel.peek() == "high-2"
    receive_channel.close()
    with pytest.raises(trio.ClosedResourceError):
        receive_channel.peek()
