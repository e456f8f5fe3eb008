"""``fanout``: one publisher, N subscribers (N = 10, 100, 1000), over real TCP on loopback, one process.

peerkit: N subscriber nodes each watch the publisher (a contact that allows them). A sample is the
time from ``publisher.set_presence(...)`` until the presence handler of every one of the N nodes
has seen it (each node decrypts, decodes and dispatches its own copy). It is measured twice: with
a plain-function handler, which each node calls in the task that reads the channel (as the
reference counts in its reading task), and with a coroutine handler, which runs in a task of its
own (one more task switch per delivery, so that a slow handler holds up no channel).

Reference, in the same run: the same fan-out with plain anyio TCP: the publisher writes the same
bytes (the ``notify`` message's CBOR with its 2-byte length frame, no encryption) to N connections,
and N reader tasks read and decode them.

Figures: p50 and p99 of the all-delivered time, and deliveries per second (N / all-delivered time,
median over samples), with the targets: N=1000 all delivered in p50 <= 250 ms, at least 0.5x the
plain fan-out rate, and 0.8x at N=1000 with plain-function handlers. Samples of the three take
turns. N=1000 is measured on trio as well (against the same plain fan-out on trio), with at least
0.5x the plain rate with plain-function handlers.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import AsyncIterator

import anyio
import anyio.abc

from benchmarks.harness import Progress, Result, median, percentile
from peerkit.contacts import Contact
from peerkit.events import PresenceChanged
from peerkit.handles import Handle
from peerkit.identity import Identity
from peerkit.model import Presence, PresenceStatus, Scope
from peerkit.node import Node
from peerkit.proto import messages
from peerkit.proto.admission import AdmissionPolicy

NAME = "fanout"
SIZES = (10, 100, 1000)
SAMPLES = {10: 60, 100: 40, 1000: 20}
#: N and the samples of the same measurement on trio, anyio's other backend.
ON_TRIO = (1000, 20)
STEPS = (sum(SAMPLES.values()) + ON_TRIO[1]) // 10 + len(SIZES) + 1
TARGET_P50_MS = 250.0
#: Deliveries per second against plain, at N=1000 with plain-function handlers.
TARGET_INLINE_RATIO = 0.8
#: The kinds of presence handler measured, and what the figures call them.
HANDLERS = {"inline": "plain-function handlers", "task": "coroutine handlers"}
_LENGTH = struct.Struct(">H")


class Counter:
    """Counts deliveries of the current sample; ``done`` is set when all N have arrived."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self.wanted = ""
        self.done = anyio.Event()

    def expect(self, text: str) -> None:
        self.seen, self.wanted, self.done = 0, text, anyio.Event()

    def arrived(self, text: str) -> None:
        if text == self.wanted:
            self.seen += 1
            if self.seen == self.n:
                self.done.set()


async def run_node(node: Node, *, task_status: anyio.abc.TaskStatus[Node]) -> None:
    """Run ``node`` until cancelled; reports it once it is running."""
    async with node:
        task_status.started(node)
        await anyio.sleep_forever()


async def watchers(stack: contextlib.AsyncExitStack, publisher: Node, n: int) -> list[tuple[Node, Contact]]:
    """``n`` nodes, signed in, each a contact of ``publisher`` and holding it as a contact (not yet
    subscribed); they stop with ``stack``."""
    tg = await stack.enter_async_context(anyio.create_task_group())
    stack.callback(tg.cancel_scope.cancel)
    made = []
    for _ in range(n):
        # Each node runs in a task of its own, as in an application (one task entering many
        # nodes would nest their task groups, and every cancellation check would walk them).
        node = await tg.start(run_node, Node(identity=Identity.generate(), listen=("127.0.0.1", 0)))
        await node.sign_in(Scope.INTERNET)
        await publisher.contacts.add(node.id)
        made.append((node, await node.contacts.add(publisher.id, endpoints=[publisher.endpoint])))
    return made


def count_arrivals(node: Node, counter: Counter, *, inline: bool) -> Handle:
    """A presence handler on ``node`` that tells ``counter`` what it saw: a plain function when
    ``inline``, else a coroutine function."""
    if inline:
        return node.add_presence_handler(lambda event: counter.arrived(event.presence.text))

    async def handler(event: PresenceChanged) -> None:
        counter.arrived(event.presence.text)

    return node.add_presence_handler(handler)


class Subscribed:
    """A publisher and its subscriber nodes, each with a presence handler that counts arrivals."""

    def __init__(self, publisher: Node, nodes: list[Node], counter: Counter) -> None:
        self.publisher = publisher
        self.nodes = nodes
        self.counter = counter
        self.handles: list[Handle] = []

    def count_with(self, *, inline: bool) -> None:
        """Count arrivals with plain-function handlers (``inline``) or coroutine ones from now on."""
        for handle in self.handles:
            handle.remove()
        self.handles = [count_arrivals(node, self.counter, inline=inline) for node in self.nodes]


@contextlib.asynccontextmanager
async def subscribed_publisher(
    n: int, counter: Counter, progress: Progress, *, inline: bool = False
) -> AsyncIterator[Subscribed]:
    """A publisher with ``n`` subscriber nodes watching it, in this process; each subscriber's
    presence handler (a plain function when ``inline``) tells ``counter`` what it saw."""
    async with contextlib.AsyncExitStack() as stack:
        # All its subscribers connect from 127.0.0.1, faster than the listener lets one source
        # start handshakes (50 a second): the figure is the fan-out, so that limit is lifted.
        publisher = await stack.enter_async_context(
            Node(
                nickname="publisher",
                identity=Identity.generate(),
                listen=("127.0.0.1", 0),
                admission=AdmissionPolicy(rate=10.0**7, burst=10**7),
            )
        )
        await publisher.sign_in(Scope.INTERNET)

        subscribers = await watchers(stack, publisher, n)
        subscribed = Subscribed(publisher, [node for node, _ in subscribers], counter)
        subscribed.count_with(inline=inline)
        counter.expect(publisher.presence.text)  # the first state of each subscription
        for i, (_, contact) in enumerate(subscribers):
            await contact.subscribe()
            if i % 100 == 99:
                progress()
        with anyio.fail_after(60):
            await counter.done.wait()
        yield subscribed


@contextlib.asynccontextmanager
async def _plain(n: int, counter: Counter) -> AsyncIterator[list[anyio.abc.SocketStream]]:
    """``n`` plain TCP connections, each read by a task that decodes frames."""
    async with contextlib.AsyncExitStack() as stack:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        await stack.enter_async_context(listener)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        tg = await stack.enter_async_context(anyio.create_task_group())
        accepted: list[anyio.abc.SocketStream] = []
        all_in = anyio.Event()

        async def read(stream: anyio.abc.SocketStream) -> None:
            buffer = bytearray()
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                while True:
                    buffer += await stream.receive(65536)
                    while len(buffer) >= 2:
                        (size,) = _LENGTH.unpack_from(buffer)
                        if len(buffer) < 2 + size:
                            break
                        message = messages.decode_message(bytes(buffer[2 : 2 + size]))
                        del buffer[: 2 + size]
                        counter.arrived(message["v"][1])

        async def serve(stream: anyio.abc.SocketStream) -> None:
            accepted.append(stream)
            if len(accepted) == n:
                all_in.set()
            await anyio.sleep_forever()

        clients: list[anyio.abc.SocketStream] = []
        try:
            tg.start_soon(listener.serve, serve)
            for _ in range(n):
                client = await anyio.connect_tcp("127.0.0.1", port)
                clients.append(client)
                tg.start_soon(read, client)
            with anyio.fail_after(30):
                await all_in.wait()
            yield accepted
        finally:
            # Every connection closed, both ends, before the group is cancelled: its body (this
            # one) is inside the group's scope, and would be cancelled at its first close.
            with anyio.CancelScope(shield=True):
                for stream in [*clients, *accepted]:
                    await stream.aclose()
            tg.cancel_scope.cancel()


async def _plain_sample(streams: list[anyio.abc.SocketStream], counter: Counter, text: str) -> float:
    # One reference sample: the notification's bytes written to every plain connection, all read.
    counter.expect(text)
    body = messages.encode_message({"t": "notify", "k": "presence", "v": [int(PresenceStatus.BUSY), text]})
    frame = _LENGTH.pack(len(body)) + body
    start = time.perf_counter()
    for stream in streams:
        await stream.send(frame)
    with anyio.fail_after(60):
        await counter.done.wait()
    return time.perf_counter() - start


async def _measure(n: int, samples: int, progress: Progress) -> dict[str, list[float]]:
    # Each kind of handler in turn, its samples taking turns with plain ones: "inline" and
    # "plain-inline" pair up, as do "task" and "plain-task".
    taken: dict[str, list[float]] = {}
    counter = Counter(n)
    async with subscribed_publisher(n, counter, progress) as subscribed, _plain(n, counter) as streams:
        for kind in HANDLERS:
            subscribed.count_with(inline=kind == "inline")
            ours, plain = taken.setdefault(kind, []), taken.setdefault(f"plain-{kind}", [])
            for i in range(samples + 2):
                text = f"{kind} {i}"
                counter.expect(text)
                start = time.perf_counter()
                await subscribed.publisher.set_presence(Presence(PresenceStatus.BUSY, text))
                with anyio.fail_after(60):
                    await counter.done.wait()
                took = time.perf_counter() - start
                plain_took = await _plain_sample(streams, counter, f"plain {kind} {i}")
                if i >= 2:  # warm-up samples are dropped
                    ours.append(took)
                    plain.append(plain_took)
                if i % 20 == 0:
                    progress()
    return taken


def run(progress: Progress, quick: bool = False) -> list[Result]:
    """The ``fanout`` figures."""
    results: list[Result] = []
    for n in SIZES[:2] if quick else SIZES:
        samples = 5 if quick else SAMPLES[n]
        taken = anyio.run(_measure, n, samples, progress)
        for kind, handlers in HANDLERS.items():
            ours, plain = taken[kind], taken[f"plain-{kind}"]
            for q, label in ((0.5, "p50"), (0.99, "p99")):
                mine, theirs = percentile(ours, q) * 1000, percentile(plain, q) * 1000
                results.append(
                    Result(
                        NAME,
                        f"N={n}: set_presence until all {n} {handlers} saw it, {label} (plain/peerkit)",
                        "ms",
                        mine,
                        "plain anyio writes of the same bytes, all read",
                        theirs,
                        theirs / mine,
                        None,
                    )
                )
                if n == 1000 and label == "p50" and kind == "task":
                    results.append(
                        Result(
                            NAME,
                            "N=1000 all delivered to coroutine handlers, p50 (ratio = 250 ms target/peerkit)",
                            "ms",
                            mine,
                            "the target",
                            TARGET_P50_MS,
                            TARGET_P50_MS / mine,
                            1.0,
                        )
                    )
            rates = [n / t for t in ours]
            plain_rates = [n / t for t in plain]
            results.append(
                Result(
                    NAME,
                    f"N={n}: deliveries/s to {handlers}",
                    "/s",
                    median(rates),
                    "plain anyio fan-out",
                    median(plain_rates),
                    median([a / b for a, b in zip(rates, plain_rates, strict=True)]),
                    TARGET_INLINE_RATIO if n == 1000 and kind == "inline" else 0.5,
                )
            )
    n, samples = (10, 5) if quick else ON_TRIO
    taken = anyio.run(_measure, n, samples, progress, backend="trio")
    for kind, handlers in HANDLERS.items():
        rates = [n / t for t in taken[kind]]
        plain_rates = [n / t for t in taken[f"plain-{kind}"]]
        results.append(
            Result(
                NAME,
                f"N={n} on trio: deliveries/s to {handlers}",
                "/s",
                median(rates),
                "plain anyio fan-out on trio",
                median(plain_rates),
                median([a / b for a, b in zip(rates, plain_rates, strict=True)]),
                0.5 if kind == "inline" else None,
            )
        )
    return results
