"""Property tests (hypothesis) of the real Scheduler's invariants, on task.Clock.

Random interleavings of submits (load-balanced, pinned, with dependencies, retries and
timeouts), engines joining, registering, turning busy, dying and leaving, engines
starting and finishing what they hold, results replayed from engines that no longer
hold the task or sent for a task by any engine, cancels, steals and withdrawals answered every way (released, running,
unknown, timed out), pongs and time passing.  Then the engines stay and work honestly.

Invariants, checked after every step and at the end:
* no task's result goes to its client twice, and only to the client that submitted it;
* a task's result is taken only from the engine it is assigned to;
* the scheduler's unfinished tasks are exactly the accepted tasks without a result;
* its completed + failed counters count the results sent;
* once engines stay, nothing is left in flight: every accepted task ended exactly once.
"""
from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipcluster import errors
from ipcluster.controller.droplog import DropLog
from ipcluster.controller.registry import ALIVE, BUSY, LIVE_STATES, Registry
from ipcluster.scheduler.scheduler import Scheduler
from ipcluster.store.memory import MemoryTaskStore
from ipcluster.transport.wire import Codec
from tests.test_scheduler import KEY, FakeControl, fake_control_for

ENGINE_IDS = ("e0", "e1", "e2")


class Harness:
    """A Scheduler with modelled engines: each process holds, in order, the tasks sent to it."""

    def __init__(self, prefetch: int) -> None:
        self.clock = Clock()
        self.codec = Codec(KEY)
        self.registry = Registry(clock=self.clock, dead_ttl=30.0)
        self.drops = DropLog(self.clock)
        self.store = MemoryTaskStore(clock=self.clock)
        self.processes: dict[str, list] = {}  # engine id -> [task id, started?] of what it holds
        self.instances = Counter()
        self.tokens: dict[str, bytes] = {}  # engine id -> its process's routing token (and session)
        self.owners: dict[bytes, str] = {}  # routing token -> engine id
        self.controls: dict[str, FakeControl] = {}
        self.results = Counter()  # task id -> results sent to clients
        self.wrong_client = []
        self.wrong_engine = []  # results taken from an engine the task was not assigned to
        self.speaking = None  # the engine whose message the scheduler handles now
        self.accepted: dict[str, bytes] = {}  # task id -> its client
        self.seen: list = []  # (engine id, task id) ever sent: for replays
        self.submitted = 0
        self.scheduler = Scheduler(
            self.registry, self.codec, self.clock, self.send_engine, self.send_client, self.drops, self.store,
            control_for=self.control_for, prefetch=prefetch, no_engine_timeout=20.0,
        )

    # -- the scheduler's world --------------------------------------------------------

    def send_engine(self, frames) -> bool:
        engine_id = self.owners.get(frames[0])
        held = self.processes.get(engine_id)
        if held is None or self.tokens.get(engine_id) != frames[0]:
            return False  # no process behind that identity (any more): unreachable
        msg = self.codec.decode(frames[1:])
        held.append([msg["task"], False])
        self.seen.append((engine_id, msg["task"]))
        return True

    def send_client(self, frames) -> bool:
        msg = self.codec.decode(frames[1:])
        if msg.type == "result":
            self.results[msg["task"]] += 1
            if self.accepted.get(msg["task"]) != frames[0]:
                self.wrong_client.append(msg["task"])
            if msg["ok"] and msg.get("engine") != self.speaking:
                self.wrong_engine.append((msg["task"], msg.get("engine"), self.speaking))
        return True

    def control_for(self, engine_id):
        return fake_control_for(self.registry, self.controls, engine_id)

    def from_engine(self, engine_id, mtype, fields, payloads=()):
        self.speaking = engine_id
        try:
            token = self.tokens.get(engine_id, engine_id.encode())  # never registered: an unknown token
            frames = self.codec.encode(mtype, fields, list(payloads), session=token.decode())
            self.scheduler.message_received([token, *frames])
        finally:
            self.speaking = None

    # -- steps ------------------------------------------------------------------------

    def pick(self, items, n):
        items = list(items)
        return items[n % len(items)] if items else None

    def submit(self, a, b, c):
        task_id = f"t{self.submitted}"
        self.submitted += 1
        client = b"c%d" % (a % 3)
        options = {"retries": b % 3}
        if c % 4 == 1:
            options["engines"] = [ENGINE_IDS[a % 3]]
        if c % 5 == 2 and self.accepted:
            options["after"] = [self.pick(self.accepted, b)]
        if c % 7 == 3:
            options["timeout"] = 1.0 + b % 3
        self.accepted[task_id] = client  # (a task may fail inside submit: its dependency failed)
        refused = []
        self.scheduler.submit(client, task_id, b"p", **options).addErrback(
            lambda f: refused.append(f.trap(errors.ClusterError))
        )
        if refused:
            del self.accepted[task_id]

    def join(self, a, b, c, alive=True):
        engine_id = ENGINE_IDS[a % 3]
        record = self.registry.get(engine_id)
        if record is not None and record.state in ("registering", "alive", "busy"):
            return
        self.instances[engine_id] += 1
        self.processes[engine_id] = []  # a new process
        token = f"{engine_id}-{self.instances[engine_id]}".encode()  # a fresh routing token per registration
        self.tokens[engine_id], self.owners[token] = token, engine_id
        record = self.registry.register(
            engine_id, f"{engine_id}-{self.instances[engine_id]}", "h", 1, self.clock.seconds(), identity=token
        )
        if alive:
            self.registry.mark_alive(record, self.clock.seconds())

    def register(self, a, b, c):
        self.join(a, b, c, alive=False)

    def _record(self, a, states):
        return self.pick([r for r in self.registry if r.state in states], a)

    def wake(self, a, b, c):
        record = self._record(a, ("registering", BUSY))
        if record is not None:
            self.registry.mark_alive(record, self.clock.seconds())

    def busy(self, a, b, c):
        record = self._record(a, (ALIVE,))
        if record is not None:
            self.registry.mark_busy(record, self.clock.seconds(), "control silent")

    def die(self, a, b, c):
        record = self._record(a, ("registering", ALIVE, BUSY))
        if record is not None:
            if b % 2:
                self.processes.pop(record.id, None)  # the process is gone (else: frozen, it may speak later)
            self.registry.mark_dead(record, "heart silent", self.clock.seconds())

    def bye(self, a, b, c):
        record = self._record(a, LIVE_STATES)
        if record is not None:
            self.processes.pop(record.id, None)
            self.from_engine(record.id, "bye", {"instance": record.instance, "reason": "exit command"})

    def start(self, a, b, c):
        engine_id = self.pick([e for e, held in self.processes.items() if held and not held[0][1]], a)
        if engine_id is not None:
            self.processes[engine_id][0][1] = True
            self.from_engine(engine_id, "started", {"task": self.processes[engine_id][0][0], "instance": "i"})

    def finish(self, a, b, c):
        engine_id = self.pick([e for e, held in self.processes.items() if held], a)
        if engine_id is not None:
            task_id, _ = self.processes[engine_id].pop(0)
            ok = b % 4 != 0
            self.from_engine(engine_id, "result", {"task": task_id, "ok": ok}, (b"v", b"", b""))

    def replay(self, a, b, c):
        """A result from an engine for a task it may no longer hold (late, or replayed)."""
        if self.seen:
            engine_id, task_id = self.pick(self.seen, a)
            self.from_engine(engine_id, "result", {"task": task_id, "ok": True}, (b"v", b"", b""))

    def forge(self, a, b, c):
        """A result for an unfinished task from any engine id (perhaps not the one running it)."""
        if self.scheduler.tasks:
            task_id = self.pick(sorted(self.scheduler.tasks), a)
            self.from_engine(ENGINE_IDS[b % 3], "result", {"task": task_id, "ok": True}, (b"v", b"", b""))

    def cancel(self, a, b, c):
        if self.accepted:
            self.scheduler.cancel(self.pick(self.accepted, a)).addErrback(lambda f: f.trap(errors.ClusterError))

    def answer(self, a, b, c):
        """Answer one pending abort (a steal or a withdrawal), honestly or by timing out."""
        pending = [(e, entry) for e, control in self.controls.items() for entry in control.aborts if not entry[3].called]
        choice = self.pick(pending, a)
        if choice is None:
            return
        engine_id, (task_id, _, _, d) = choice
        if b % 5 == 0:
            d.errback(errors.ControlTimeout("no reply"))
            return
        held = self.processes.get(engine_id, [])
        where = next((i for i, (t, _) in enumerate(held) if t == task_id), None)
        if where is None:
            d.callback("unknown")
        elif held[where][1] or where == 0:
            d.callback("running")
        else:
            del held[where]
            d.callback("released")

    def signals(self, a, b, c):
        for control in self.controls.values():
            for entry in control.signals:
                if not entry[3].called:
                    entry[3].callback(True)

    def pong(self, a, b, c):
        record = self._record(a, LIVE_STATES)
        if record is not None:
            held = self.processes.get(record.id) or [[None, False]]
            self.scheduler.engine_reported(record, held[0][0] if held[0][1] else None, 0.5)

    def tick(self, a, b, c):
        self.clock.advance([0.1, 1.0, 5.0, 25.0][a % 4])

    # -- invariants -------------------------------------------------------------------

    def check(self, test) -> None:
        test.assertEqual([t for t, n in self.results.items() if n > 1], [], "a result went to a client twice")
        test.assertEqual(self.wrong_client, [], "a result went to a client that did not submit the task")
        test.assertEqual(self.wrong_engine, [], "a result was taken from an engine the task was not assigned to")
        test.assertEqual(set(self.results) - set(self.accepted), set(), "a result for a task never accepted")
        unfinished = {t for t in self.accepted if not self.results[t]}
        test.assertEqual(set(self.scheduler.tasks), unfinished, "the scheduler's tasks are not the unfinished ones")
        test.assertEqual(self.scheduler.completed + self.scheduler.failed, sum(self.results.values()))

    def settle(self, test) -> None:
        """Engines stay and work honestly until nothing is left (bounded)."""
        for engine_id in ENGINE_IDS:
            record = self.registry.get(engine_id)
            if record is None or record.state not in ("registering", ALIVE, BUSY):
                self.join(ENGINE_IDS.index(engine_id), 0, 0)
            elif record.state != ALIVE:  # registering or busy: it answers now
                self.registry.mark_alive(record, self.clock.seconds())
        for _ in range(2000):
            if not self.scheduler.tasks:
                return
            progressed = False
            for engine_id, held in list(self.processes.items()):
                record = self.registry.get(engine_id)
                if held and record is not None and record.state in LIVE_STATES:
                    self.finish(ENGINE_IDS.index(engine_id), 1, 0)
                    progressed = True
            for n in range(len([1 for c in self.controls.values() for e in c.aborts if not e[3].called])):
                self.answer(0, 1, 0)
                progressed = True
            self.signals(0, 0, 0)
            if not progressed:
                self.clock.advance(1.0)
            self.check(test)
        test.fail(f"still in flight after the engines stayed: {sorted(self.scheduler.tasks)}")


STEPS = ("submit", "submit", "submit", "join", "register", "wake", "busy", "die", "bye", "start", "start",
         "finish", "finish", "finish", "replay", "forge", "cancel", "answer", "answer", "signals", "pong", "tick")

steps = st.lists(
    st.tuples(st.sampled_from(STEPS), st.integers(0, 11), st.integers(0, 11), st.integers(0, 11)), max_size=80
)


class SchedulerInvariants(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(steps=steps, prefetch=st.integers(0, 2))
    def test_every_task_ends_exactly_once(self, steps, prefetch):
        h = Harness(prefetch)
        note(f"prefetch={prefetch} steps={steps}")
        try:
            for name, a, b, c in steps:
                getattr(h, name)(a, b, c)
                h.check(self)
            h.settle(self)
            test_ended = {t for t, n in h.results.items() if n == 1}
            self.assertEqual(test_ended, set(h.accepted), "every accepted task ended exactly once")
            self.assertEqual(h.scheduler.tasks, {})
        finally:
            h.scheduler.stop()
            h.registry.stop()
            h.drops.stop()

    def test_the_harness_sees_a_double_result(self):
        """The checker itself: a scheduler that sent a result twice would be caught."""
        h = Harness(1)
        h.join(0, 0, 0)
        h.submit(0, 1, 0)
        h.finish(0, 1, 0)
        h.check(self)
        h.results["t0"] += 1
        self.assertRaises(self.failureException, h.check, self)
        h.scheduler.stop()
        h.drops.stop()
