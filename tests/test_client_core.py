"""ClientCore: turning result messages into values and exceptions."""
import pickle

import cloudpickle
from twisted.trial.unittest import SynchronousTestCase

from ipcluster import errors
from ipcluster.client.core import ClientCore
from ipcluster.transport.wire import Codec

KEY = b"k" * 32
SESSION = "s" * 32


def connected(core, session=SESSION):
    """A Codec playing the controller, after it welcomed ``core`` into ``session``."""
    controller = Codec(KEY, session=session)
    welcomed = []
    msg_id, _ = core.request("connect", {}, lambda ok, value: welcomed.append(ok))
    core.received(controller.encode("welcome", {"ref": msg_id, "version": 2}))
    assert welcomed == [True] and core.session == session
    return controller


def remote_failure(exc):
    """What an engine reports for a task that raised ``exc``."""
    error = {"type": type(exc).__name__, "message": str(exc), "traceback": "Traceback: remote line 1\n"}
    return error, cloudpickle.dumps(exc)


class ResultTests(SynchronousTestCase):
    def setUp(self):
        self.core = ClientCore(KEY)
        self.controller = connected(self.core)
        self.results = []
        self.task_id, _ = self.core.submit(abs, (-1,), {}, {"engine": "e1"}, self.results.append)

    def deliver(self, ok, payload=b"", error=None, out=b"", err=b"", task=None):
        fields = {"task": task or self.task_id, "engine": "e1", "ok": ok}
        if error is not None:
            fields["error"] = error
        self.core.received(self.controller.encode("result", fields, [payload, out, err]))

    def value(self):
        [result] = self.results
        return result.value

    def test_success(self):
        self.deliver(True, pickle.dumps({"answer": 42}), out=b"printed\n", err=b"warned\n")
        [result] = self.results
        self.assertTrue(result.ok)
        self.assertEqual(result.value, {"answer": 42})
        self.assertEqual((result.stdout, result.stderr, result.engine), ("printed\n", "warned\n", "e1"))

    def test_remote_exception_reraised_with_remote_traceback(self):
        try:
            1 / 0
        except ZeroDivisionError as e:
            error, payload = remote_failure(e)
        self.deliver(False, payload, error)
        value = self.value()
        self.assertIsInstance(value, ZeroDivisionError)
        self.assertIsInstance(value.__cause__, errors.RemoteTraceback)
        self.assertEqual(value.__cause__.tb, "Traceback: remote line 1\n")
        self.assertFalse(self.results[0].ok)

    def test_keyboard_interrupt_wrapped(self):
        error, payload = remote_failure(KeyboardInterrupt())
        self.deliver(False, payload, error)
        value = self.value()
        self.assertIsInstance(value, errors.TaskInterrupted)
        self.assertEqual(value.ename, "KeyboardInterrupt")
        self.assertEqual(value.traceback, "Traceback: remote line 1\n")

    def test_system_exit_wrapped(self):
        error, payload = remote_failure(SystemExit(3))
        self.deliver(False, payload, error)
        self.assertIsInstance(self.value(), errors.TaskInterrupted)
        self.assertEqual((self.value().ename, self.value().evalue), ("SystemExit", "3"))

    def test_controller_made_engine_died(self):
        self.deliver(False, b"", errors.to_wire(errors.EngineDied("engine e1 dead before running it")))
        value = self.value()
        self.assertIs(type(value), errors.EngineDied)
        self.assertEqual(str(value), "engine e1 dead before running it")

    def test_engine_made_task_aborted(self):
        self.deliver(False, b"", errors.to_wire(errors.TaskAborted("task aborted before it ran")))
        self.assertIs(type(self.value()), errors.TaskAborted)

    def test_user_exception_named_like_ours_is_not_taken_for_ours(self):
        # No 'origin' mark: the task raised it, so it is a RemoteError, not ipcluster's own.
        self.deliver(False, b"", {"type": "EngineDied", "message": "user code", "traceback": "tb"})
        value = self.value()
        self.assertIs(type(value).__bases__[0], errors.RemoteError)  # a subclass named after the original
        self.assertEqual((value.ename, type(value).__name__), ("EngineDied", "EngineDied"))
        self.assertNotIsInstance(value, errors.EngineDied)

    def test_unpicklable_payload(self):
        error = {"type": "WeirdError", "message": "odd", "traceback": "remote tb"}
        self.deliver(False, b"\x80\x05not a pickle", error)
        value = self.value()
        self.assertIs(type(value).__bases__[0], errors.RemoteError)  # a subclass named after the original
        self.assertEqual((value.ename, value.evalue, value.traceback), ("WeirdError", "odd", "remote tb"))
        self.assertIn("remote tb", str(value))

    def test_exception_that_could_not_be_pickled_remotely(self):
        self.deliver(False, b"", {"type": "LockError", "message": "cannot pickle", "traceback": "tb"})
        value = self.value()
        self.assertIs(type(value).__bases__[0], errors.RemoteError)  # a subclass named after the original
        self.assertEqual(value.ename, "LockError")

    def test_malformed_error_report(self):
        self.deliver(False, b"", "oops")
        self.assertIs(type(self.value()), errors.ClusterError)

    def test_result_delivered_once(self):
        self.deliver(True, pickle.dumps(1))
        self.deliver(True, pickle.dumps(2))
        self.assertEqual(len(self.results), 1)
        self.assertEqual(self.core.dropped, 1)

    def test_undecodable_success_payload(self):
        self.deliver(True, b"not a pickle")
        [result] = self.results
        self.assertFalse(result.ok)
        self.assertIsInstance(result.value, errors.ClusterError)

    def test_bad_messages_dropped(self):
        self.core.received([b"garbage"])
        self.core.received(Codec(b"other").encode("result", {"task": self.task_id, "ok": True}, [b"", b"", b""]))
        self.assertEqual(self.results, [])
        self.assertEqual(self.core.dropped, 2)


class ReplyTests(SynchronousTestCase):
    def setUp(self):
        self.core = ClientCore(KEY)
        self.controller = connected(self.core)
        self.replies = []
        self.msg_id, frames = self.core.request("engines", {}, lambda ok, value: self.replies.append((ok, value)))
        self.request = self.controller.decode(frames)

    def test_request_is_signed(self):
        self.assertEqual((self.request.type, self.request.id), ("engines", self.msg_id))

    def test_ok_reply(self):
        self.core.received(self.controller.encode("reply", {"ref": self.msg_id, "ok": True, "value": [1]}))
        self.assertEqual(self.replies, [(True, [1])])

    def test_error_reply(self):
        error = {"type": "UnknownEngine", "message": "no engine 'x'"}
        self.core.received(self.controller.encode("reply", {"ref": self.msg_id, "ok": False, "error": error}))
        [(ok, value)] = self.replies
        self.assertFalse(ok)
        self.assertIs(type(value), errors.UnknownEngine)


class SeveralWaiters(SynchronousTestCase):
    """A task submitted here and fetched here too: both futures get the result."""

    def test_submit_and_fetch_both_get_the_result(self):
        core = ClientCore(KEY)
        controller = connected(core)
        submitted, fetched = [], []
        task_id, _ = core.submit(abs, (-1,), {}, {}, submitted.append)
        core.expect(task_id, fetched.append)
        core.received(controller.encode("result", {"task": task_id, "ok": True}, [pickle.dumps(1), b"", b""]))
        self.assertEqual([r.value for r in submitted], [1])
        self.assertEqual([r.value for r in fetched], [1])

    def test_forgetting_one_waiter_keeps_the_other(self):
        core = ClientCore(KEY)
        controller = connected(core)
        submitted, fetched = [], []
        task_id, _ = core.submit(abs, (-1,), {}, {}, submitted.append)
        core.expect(task_id, fetched.append)
        core.forget(task_id=task_id, on_result=fetched.append)
        core.received(controller.encode("result", {"task": task_id, "ok": True}, [pickle.dumps(1), b"", b""]))
        self.assertEqual([r.value for r in submitted], [1])
        self.assertEqual(fetched, [])
