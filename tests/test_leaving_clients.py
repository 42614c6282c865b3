"""Integration: clients that leave with work in flight never stop the controller serving others.

The regression test for the front end's stall (issue 12): a result for a
client that has left is "undeliverable" (ROUTER_MANDATORY's EHOSTUNREACH), and
that failed send processed the client socket's commands and swallowed the
readable edge of the requests already waiting from the other clients; nothing
scheduled a read after a failed send, so the socket went deaf.
"""
from __future__ import annotations

import time

from twisted.internet import defer, threads
from twisted.trial import unittest

from ipcluster import Client
from tests.cluster import BOUND, start_controller, start_engines, within

ROUNDS = 40
SERVED_WITHIN = 30.0  # seconds for the steady client's tasks: generous; a deaf socket never answers


def nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


def leave_with_work_in_flight(conn: str, round_: int) -> None:
    """A client that runs two short tasks, leaves some work running or queued, and closes."""
    client = Client(conn, timeout=BOUND)
    try:
        client.submit(abs, -round_).result(BOUND)
        client.submit(abs, round_).result(BOUND)
        if round_ % 2:
            client.submit(nap, 0.7)
            for k in range(4):
                client.submit(nap, 0.05 * k)
        else:
            client.map(abs, range(10))  # never iterated
    finally:
        client.close()


def run_rounds(conn: str, rounds: int) -> list:
    """The loop of the issue; the steady client's wait for each round's results, in seconds."""
    waits = []
    steady = Client(conn, timeout=BOUND, controller_timeout=BOUND)
    try:
        for round_ in range(rounds):
            leave_with_work_in_flight(conn, round_)
            start = time.monotonic()
            futures = [steady.submit(pow, 2, round_), steady.submit(nap, 0.01 * (round_ % 5))]
            try:
                values = [f.result(SERVED_WITHIN) for f in futures]
            except TimeoutError:
                raise AssertionError(
                    f"round {round_}: the steady client waited {SERVED_WITHIN:g} s for two tiny tasks"
                ) from None
            assert values == [2**round_, 0.01 * (round_ % 5)], values
            waits.append(time.monotonic() - start)
    finally:
        steady.close()
    return waits


class LeavingClients(unittest.TestCase):
    timeout = 900

    @defer.inlineCallbacks
    def test_controller_keeps_serving_while_clients_leave_work_in_flight(self):
        controller = yield start_controller(self)
        yield start_engines(self, controller, ["e0", "e1"])
        conn = str(controller.config.connection_file)
        waits = yield within(
            threads.deferToThread(run_rounds, conn, ROUNDS), ROUNDS * SERVED_WITHIN + BOUND, "the rounds"
        )
        self.assertEqual(len(waits), ROUNDS)
        # The loop did exercise the path: results went to clients that had left.
        undeliverable = controller.drops.totals[("client", "reply undeliverable (client gone, or not reading)")]
        self.assertGreater(undeliverable, ROUNDS // 2)
        # And a new client still connects at once.
        client = yield within(threads.deferToThread(Client, conn, 10.0), BOUND, "a new client")
        self.addCleanup(lambda: threads.deferToThread(client.close))
        value = yield within(threads.deferToThread(lambda: client.submit(pow, 3, 3).result(BOUND)), BOUND, "a task")
        self.assertEqual(value, 27)
