"""A priority channel: Trio memory-channel semantics, best item first.

:func:`open_priority_channel` returns a pair of endpoints that behave like the ones
:func:`trio.open_memory_channel` returns -- ``send``/``receive`` and their
``_nowait`` forms, ``close``/``aclose``, ``clone``, sync and async context
managers, ``async for`` -- except that a receiver gets the buffered item with the
highest priority, and among equal priorities the one sent first.

It is the runner's ready queue, and useful on its own:

>>> import trio
>>> async def main() -> list[str]:
...     send_channel, receive_channel = open_priority_channel()
...     async with send_channel, receive_channel:
...         await send_channel.send("tidy up", priority=0)
...         await send_channel.send("page the on-call", priority=3)
...         await send_channel.send("reply to mail", priority=1)
...         await send_channel.send("write the report", priority=1)
...         send_channel.close()
...         return [item async for item in receive_channel]
>>> trio.run(main)
['page the on-call', 'reply to mail', 'write the report', 'tidy up']

Two rules make the order precise where tasks are waiting:

* A task parked in :meth:`PriorityReceiveChannel.receive` is handed the very next
  item sent, whatever its priority, as in Trio's channels: the buffer was empty when
  it started waiting, so that item was the best one at the time. Receivers are served
  in the order they started waiting.
* A task blocked in :meth:`PrioritySendChannel.send` (the buffer is full) has not
  put its item in the buffer yet. Each time a receiver takes an item, the
  longest-waiting sender's item joins the buffer first and then the best one is
  taken, so a blocked high-priority item can still overtake the buffer; blocked
  senders themselves are admitted in the order they started waiting.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from types import TracebackType
from typing import Generic, TypeAlias, TypeVar, cast, final

import attrs
import outcome
import trio
from trio.lowlevel import Task, enable_ki_protection

T = TypeVar("T")

# The ordering of the channel lives here and nowhere else. A heap entry is
# (sort key..., priority, value): heapq pops the smallest entry, so the sort key
# decides which buffered item a receiver gets -- today the highest priority, then
# the lowest sequence number (FIFO). Fair scheduling across tenants will change
# exactly this function (its key fields, and what feeds it), nothing else. Rules:
# the key must be unique (keep `seq` in it) so that comparisons never reach the
# value, which need not be orderable; the entry must end with (priority, value),
# which the rest of the module reads as entry[-2] and entry[-1]. The key is spread
# flat into the tuple rather than nested: with a deep heap (a long queue) that makes
# every comparison measurably cheaper.
_Entry: TypeAlias = tuple[int, int, int, T]


def _make_entry(priority: int, seq: int, value: T) -> _Entry[T]:
    return (-priority, seq, priority, value)


@attrs.frozen
class PriorityChannelStatistics:
    """A snapshot of a priority channel's state, for monitoring and tests.

    Returned by :meth:`PrioritySendChannel.statistics` and
    :meth:`PriorityReceiveChannel.statistics`; both endpoints (and every clone)
    report on the same shared channel.

    Attributes:
        current_buffer_used: Items in the buffer, not counting those of blocked
            senders.
        max_buffer_size: The capacity the channel was opened with.
        open_send_channels: Send endpoints (clones included) not yet closed.
        open_receive_channels: Receive endpoints (clones included) not yet closed.
        tasks_waiting_send: Tasks blocked in ``send``, over all clones.
        tasks_waiting_receive: Tasks blocked in ``receive``, over all clones.

    """

    current_buffer_used: int
    max_buffer_size: float
    open_send_channels: int
    open_receive_channels: int
    tasks_waiting_send: int
    tasks_waiting_receive: int


@final
class _ChannelState(Generic[T]):
    """What the endpoints of one channel share."""

    __slots__ = (
        "heap",
        "max_buffer_size",
        "open_receive_channels",
        "open_send_channels",
        "receive_waiters",
        "send_waiters",
        "seq",
    )

    def __init__(self, max_buffer_size: float) -> None:
        self.max_buffer_size = max_buffer_size
        self.heap: list[_Entry[T]] = []
        self.seq = itertools.count()
        self.open_send_channels = 0
        self.open_receive_channels = 0
        # Parked tasks in arrival order, each with the endpoint it called, so that
        # closing an endpoint finds its own waiters; a sender also holds its entry.
        self.send_waiters: OrderedDict[Task, tuple[PrioritySendChannel[T], _Entry[T]]] = (
            OrderedDict()
        )
        self.receive_waiters: OrderedDict[Task, PriorityReceiveChannel[T]] = OrderedDict()

    def statistics(self) -> PriorityChannelStatistics:
        return PriorityChannelStatistics(
            current_buffer_used=len(self.heap),
            max_buffer_size=self.max_buffer_size,
            open_send_channels=self.open_send_channels,
            open_receive_channels=self.open_receive_channels,
            tasks_waiting_send=len(self.send_waiters),
            tasks_waiting_receive=len(self.receive_waiters),
        )


def open_priority_channel(
    max_buffer_size: float = math.inf,
) -> tuple[PrioritySendChannel[T], PriorityReceiveChannel[T]]:
    """Open a channel whose receivers get the highest-priority item first.

    The channel buffers up to *max_buffer_size* items; ``math.inf`` (the default)
    never blocks a sender, ``0`` makes every send wait for a receiver. Items of
    equal priority come out in the order they were sent; values are never compared,
    so they need not be orderable.

    The function is generic in the item type; annotate the endpoints to fix it::

        send_channel: PrioritySendChannel[Job]
        receive_channel: PriorityReceiveChannel[Job]
        send_channel, receive_channel = open_priority_channel()

    Example:
        >>> send_channel, receive_channel = open_priority_channel(2)
        >>> send_channel.send_nowait("low", priority=0)
        >>> send_channel.send_nowait("high", priority=2)
        >>> receive_channel.peek_priority()
        2
        >>> receive_channel.receive_nowait()
        'high'
        >>> len(receive_channel)
        1

    Args:
        max_buffer_size: How many items the buffer holds before ``send`` blocks:
            a non-negative ``int``, or ``math.inf``.

    Returns:
        A ``(send_channel, receive_channel)`` pair sharing one buffer.

    Raises:
        TypeError: If *max_buffer_size* is neither an ``int`` nor ``math.inf``.
        ValueError: If *max_buffer_size* is negative.

    """
    if max_buffer_size != math.inf and (
        not isinstance(max_buffer_size, int) or isinstance(max_buffer_size, bool)
    ):
        raise TypeError(f"max_buffer_size must be an int or math.inf, not {max_buffer_size!r}")
    if max_buffer_size < 0:
        raise ValueError(f"max_buffer_size must be >= 0, not {max_buffer_size!r}")
    state: _ChannelState[T] = _ChannelState(max_buffer_size)
    return PrioritySendChannel(state), PriorityReceiveChannel(state)


@final
class PrioritySendChannel(trio.abc.SendChannel[T]):
    """The sending endpoint of a priority channel.

    Created by :func:`open_priority_channel`, never directly. Any number of tasks
    may send at once. Close every endpoint (clones included) when done, so that
    receivers see :exc:`trio.EndOfChannel`; ``with send_channel:`` and
    ``async with send_channel:`` do that.
    """

    __slots__ = ("_closed", "_state")

    def __init__(self, state: _ChannelState[T]) -> None:
        self._state = state
        self._closed = False
        state.open_send_channels += 1

    def __repr__(self) -> str:
        return f"<PrioritySendChannel at {id(self):#x}, channel {id(self._state):#x}>"

    @enable_ki_protection
    def send_nowait(self, value: T, priority: int = 0) -> None:
        """Put *value* in the channel at once, or raise if it would have to wait.

        A task parked in ``receive`` is handed the value directly; otherwise it
        joins the buffer, ordered by *priority* (higher first), then FIFO.

        Example:
            >>> send_channel, receive_channel = open_priority_channel(1)
            >>> send_channel.send_nowait("first")
            >>> send_channel.send_nowait("second")
            Traceback (most recent call last):
              ...
            trio.WouldBlock

        Args:
            value: The item to send.
            priority: Higher values are received first, e.g. ``JobPriority.CRITICAL``
                (3) before ``JobPriority.LOW`` (0).

        Raises:
            trio.WouldBlock: If the buffer is full.
            trio.BrokenResourceError: If every receive endpoint is closed.
            trio.ClosedResourceError: If this endpoint is closed.

        """
        if self._closed:
            raise trio.ClosedResourceError("this send channel is closed")
        state = self._state
        if not state.open_receive_channels:
            raise trio.BrokenResourceError("every receive channel is closed")
        if state.receive_waiters:
            # A parked receiver implies an empty buffer: this value is the best one.
            task, _ = state.receive_waiters.popitem(last=False)
            trio.lowlevel.reschedule(task, outcome.Value(value))
        elif len(state.heap) < state.max_buffer_size:
            heapq.heappush(state.heap, _make_entry(priority, next(state.seq), value))
        else:
            raise trio.WouldBlock

    @enable_ki_protection
    async def send(self, value: T, priority: int = 0) -> None:
        """Send *value*, waiting while the buffer is full.

        Always a checkpoint. If cancelled while waiting, the value was not sent.

        Args:
            value: The item to send.
            priority: Higher values are received first.

        Raises:
            trio.BrokenResourceError: If every receive endpoint is closed, before or
                while waiting.
            trio.ClosedResourceError: If this endpoint is closed, before or while
                waiting.

        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self.send_nowait(value, priority)
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return

        state = self._state
        task = trio.lowlevel.current_task()
        entry: _Entry[T] = _make_entry(priority, next(state.seq), value)
        state.send_waiters[task] = (self, entry)

        def abort_fn(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            del state.send_waiters[task]
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort_fn)

    @enable_ki_protection
    def clone(self) -> PrioritySendChannel[T]:
        """Return another send endpoint on the same channel.

        Sending on either is the same; closing one leaves the other open, and
        receivers see the end of the channel only once every clone is closed. Give
        each producer its own clone and let it close that clone when it is done.

        Raises:
            trio.ClosedResourceError: If this endpoint is closed.

        """
        if self._closed:
            raise trio.ClosedResourceError("this send channel is closed")
        return PrioritySendChannel(self._state)

    @enable_ki_protection
    def close(self) -> None:
        """Close this endpoint without a checkpoint; closing twice is harmless.

        Tasks blocked in ``send`` on this endpoint get
        :exc:`trio.ClosedResourceError` (their items are not sent). When the last
        send endpoint closes, receivers drain what is buffered and then get
        :exc:`trio.EndOfChannel`.
        """
        if self._closed:
            return
        self._closed = True
        state = self._state
        mine = [task for task, (channel, _) in state.send_waiters.items() if channel is self]
        for task in mine:
            del state.send_waiters[task]
            trio.lowlevel.reschedule(
                task, outcome.Error(trio.ClosedResourceError("send channel closed while sending"))
            )
        state.open_send_channels -= 1
        if not state.open_send_channels:
            # Parked receivers imply an empty buffer: nothing more will come.
            for task in state.receive_waiters:
                trio.lowlevel.reschedule(task, outcome.Error(trio.EndOfChannel()))
            state.receive_waiters.clear()

    @enable_ki_protection
    async def aclose(self) -> None:
        """Close this endpoint, like :meth:`close`, then checkpoint."""
        self.close()
        await trio.lowlevel.checkpoint()

    def __enter__(self) -> PrioritySendChannel[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def statistics(self) -> PriorityChannelStatistics:
        """Return a snapshot of the channel's state (shared by all its endpoints)."""
        return self._state.statistics()


@final
class PriorityReceiveChannel(trio.abc.ReceiveChannel[T]):
    """The receiving endpoint of a priority channel.

    Created by :func:`open_priority_channel`, never directly. Any number of tasks
    may receive at once; each item goes to exactly one of them. ``async for item in
    receive_channel`` receives until every send endpoint is closed and the buffer
    is drained.

    ``len(receive_channel)`` is the number of buffered items. An endpoint is always
    true in a boolean context, empty or not, like Trio's channels.
    """

    __slots__ = ("_closed", "_state")

    def __init__(self, state: _ChannelState[T]) -> None:
        self._state = state
        self._closed = False
        state.open_receive_channels += 1

    def __repr__(self) -> str:
        return f"<PriorityReceiveChannel at {id(self):#x}, channel {id(self._state):#x}>"

    def __len__(self) -> int:
        return len(self._state.heap)

    def __bool__(self) -> bool:
        # An endpoint is a handle, not a container: `if channel:` must not turn false
        # when the buffer empties just because __len__ exists.
        return True

    @enable_ki_protection
    def receive_nowait(self) -> T:
        """Take the best item at once, or raise if there is none.

        The best item is the one with the highest priority, the earliest sent among
        equals; a blocked sender's item competes too (see the module docs).

        Raises:
            trio.WouldBlock: If there is no item and a send endpoint is still open.
            trio.EndOfChannel: If there is no item and every send endpoint is closed.
            trio.ClosedResourceError: If this endpoint is closed.

        """
        if self._closed:
            raise trio.ClosedResourceError("this receive channel is closed")
        state = self._state
        heap = state.heap
        if state.send_waiters:
            # Taking an item frees a slot: the longest-waiting sender's item enters
            # the buffer, and only then is the best one taken.
            task, (_, entry) = state.send_waiters.popitem(last=False)
            trio.lowlevel.reschedule(task)
            return heapq.heappushpop(heap, entry)[-1] if heap else entry[-1]
        if heap:
            return heapq.heappop(heap)[-1]
        if not state.open_send_channels:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    @enable_ki_protection
    async def receive(self) -> T:
        """Take the best item, waiting for one if there is none.

        Always a checkpoint. If cancelled while waiting, no item was taken.

        Returns:
            The buffered item with the highest priority (FIFO among equals), or,
            if this task had to wait, the first item sent after it started waiting.

        Raises:
            trio.EndOfChannel: If every send endpoint is closed and the buffer is
                empty, before or while waiting.
            trio.ClosedResourceError: If this endpoint is closed, before or while
                waiting.

        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            value = self.receive_nowait()
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return value

        state = self._state
        task = trio.lowlevel.current_task()
        state.receive_waiters[task] = self

        def abort_fn(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            del state.receive_waiters[task]
            return trio.lowlevel.Abort.SUCCEEDED

        # Senders reschedule us with exactly one of their values.
        return cast(T, await trio.lowlevel.wait_task_rescheduled(abort_fn))

    def _best_entry(self) -> _Entry[T] | None:
        if self._closed:
            raise trio.ClosedResourceError("this receive channel is closed")
        state = self._state
        best: _Entry[T] | None = state.heap[0] if state.heap else None
        if state.send_waiters:
            _, waiting = next(iter(state.send_waiters.values()))
            if best is None or waiting < best:
                best = waiting
        return best

    def peek_priority(self) -> int | None:
        """Return the priority of the item ``receive_nowait`` would take, without taking it.

        Lets a consumer decide whether the best waiting item is worth taking now
        (a scheduler comparing queues, for instance).

        Example:
            >>> send_channel, receive_channel = open_priority_channel()
            >>> print(receive_channel.peek_priority())
            None
            >>> send_channel.send_nowait("x", priority=1)
            >>> receive_channel.peek_priority()
            1

        Returns:
            That item's priority as it was sent, or ``None`` when there is no item.

        Raises:
            trio.ClosedResourceError: If this endpoint is closed.

        """
        best = self._best_entry()
        return None if best is None else best[-2]

    def peek(self) -> T:
        """Return the item ``receive_nowait`` would take, without taking it.

        Example:
            >>> send_channel, receive_channel = open_priority_channel()
            >>> send_channel.send_nowait("low", priority=0)
            >>> send_channel.send_nowait("high", priority=2)
            >>> receive_channel.peek()
            'high'
            >>> len(receive_channel)
            2

        Raises:
            trio.WouldBlock: If there is no item.
            trio.ClosedResourceError: If this endpoint is closed.

        """
        best = self._best_entry()
        if best is None:
            raise trio.WouldBlock
        return best[-1]

    @enable_ki_protection
    def clone(self) -> PriorityReceiveChannel[T]:
        """Return another receive endpoint on the same channel.

        Both take items from the one shared buffer (each item goes to one of them,
        this is not a broadcast); the channel stays open to senders until every
        clone is closed.

        Raises:
            trio.ClosedResourceError: If this endpoint is closed.

        """
        if self._closed:
            raise trio.ClosedResourceError("this receive channel is closed")
        return PriorityReceiveChannel(self._state)

    @enable_ki_protection
    def close(self) -> None:
        """Close this endpoint without a checkpoint; closing twice is harmless.

        Tasks blocked in ``receive`` on this endpoint get
        :exc:`trio.ClosedResourceError`. When the last receive endpoint closes,
        buffered items are discarded and senders, waiting or not, get
        :exc:`trio.BrokenResourceError`.
        """
        if self._closed:
            return
        self._closed = True
        state = self._state
        mine = [task for task, channel in state.receive_waiters.items() if channel is self]
        for task in mine:
            del state.receive_waiters[task]
            trio.lowlevel.reschedule(
                task,
                outcome.Error(trio.ClosedResourceError("receive channel closed while receiving")),
            )
        state.open_receive_channels -= 1
        if not state.open_receive_channels:
            for task in state.send_waiters:
                trio.lowlevel.reschedule(
                    task, outcome.Error(trio.BrokenResourceError("every receive channel closed"))
                )
            state.send_waiters.clear()
            state.heap.clear()

    @enable_ki_protection
    async def aclose(self) -> None:
        """Close this endpoint, like :meth:`close`, then checkpoint."""
        self.close()
        await trio.lowlevel.checkpoint()

    def __enter__(self) -> PriorityReceiveChannel[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def statistics(self) -> PriorityChannelStatistics:
        """Return a snapshot of the channel's state (shared by all its endpoints)."""
        return self._state.statistics()


__all__ = [
    "PriorityChannelStatistics",
    "PriorityReceiveChannel",
    "PrioritySendChannel",
    "open_priority_channel",
]
