"""The one table of control verbs, and the client mixin built on it."""
from __future__ import annotations

import signal

from twisted.trial import unittest

from ipcluster import errors
from ipcluster.client.verbs import ControlVerbs
from ipcluster.interfaces import IEngineControl
from ipcluster.verbs import VERBS, verb


class Table(unittest.SynchronousTestCase):
    def test_the_table_is_the_interface(self):
        """Every verb is an IEngineControl method and every method a verb."""
        methods = {name for name in IEngineControl.names() if callable(getattr(IEngineControl[name], "getSignatureInfo", None))}
        self.assertEqual(set(VERBS), methods)
        for name, v in VERBS.items():
            params = IEngineControl[name].getSignatureInfo()["positional"]
            for arg in v.args:
                self.assertIn(arg.param or arg.name, params, f"{name}: {arg.name}")

    def test_unknown_verb(self):
        e = self.assertRaises(errors.BadRequest, verb, "explode")
        self.assertIn("known: beat, abort, signal, exit, reset", str(e))
        self.assertRaises(errors.BadRequest, verb, 3)

    def test_parse_checks_and_fills_defaults(self):
        self.assertEqual(VERBS["exit"].parse({}), {"timeout": 5.0})
        self.assertEqual(VERBS["signal"].parse({"signum": "int"}), {"signum": signal.SIGINT, "task": None, "timeout": None})
        for bad in ({"signum": 0}, {"signum": 200}, {"signum": True}, {"signum": "SIGNOPE"}, {}):
            self.assertRaises(errors.BadRequest, VERBS["signal"].parse, bad)
        for bad in ({"task": ""}, {"task": 3}, {"task": "t", "timeout": -1}, {"task": "t", "timeout": float("inf")}):
            self.assertRaises(errors.BadRequest, VERBS["abort"].parse, bad)
        e = self.assertRaises(errors.BadRequest, VERBS["beat"].parse, {"nope": 1})
        self.assertIn("'nope'", str(e))

    def test_internal_arguments_are_the_controllers_own(self):
        self.assertRaises(errors.BadRequest, VERBS["abort"].parse, {"task": "t", "release": True})
        self.assertEqual(VERBS["abort"].parse({"task": "t", "release": True}, internal=True)["release"], True)

    def test_engine_args_leave_the_reply_timeout_with_the_controller(self):
        abort = VERBS["abort"]
        self.assertEqual(abort.engine_args(abort.parse({"task": "t", "timeout": 3})), {"task": "t"})
        self.assertEqual(abort.engine_args(abort.parse({"task": "t", "release": True}, internal=True)),
                         {"task": "t", "release": True})
        self.assertEqual(VERBS["exit"].engine_args({"timeout": 2.0}), {"timeout": 2.0})

    def test_call_maps_wire_names_to_parameters(self):
        calls = []

        class Control:
            def signal(self, signum, task_id=None, timeout=None):
                calls.append((signum, task_id, timeout))

        v = VERBS["signal"]
        v.call(Control(), v.parse({"signum": 15, "task": "t1"}))
        self.assertEqual(calls, [(15, "t1", None)])

    def test_client_wait(self):
        self.assertEqual(VERBS["beat"].client_wait({}, 10.0), 20.0)
        self.assertEqual(VERBS["beat"].client_wait({"timeout": 1.0}, 10.0), 11.0)
        self.assertEqual(VERBS["exit"].client_wait({"timeout": 2.0}, 10.0), 34.0)


class Mixin(unittest.SynchronousTestCase):
    """Both clients take their verbs from ControlVerbs: what reaches ``_call``."""

    def setUp(self):
        self.calls = []
        test = self

        class Client(ControlVerbs):
            timeout = 10.0

            def _call(self, mtype, fields, wait):
                test.calls.append((mtype, fields, wait))
                return "reply"

        self.client = Client()

    def test_each_verb(self):
        class Future:
            task_id = "t9"

        c = self.client
        self.assertEqual(c.beat("e0"), "reply")
        c.abort("e0", Future(), timeout=2)
        c.signal("e1", "TERM", task="t2")
        c.exit("e0")
        c.reset("e0", timeout=1.5)
        self.assertEqual(self.calls, [
            ("control", {"engine": "e0", "verb": "beat", "args": {}}, 20.0),
            ("control", {"engine": "e0", "verb": "abort", "args": {"task": "t9", "timeout": 2.0}}, 12.0),
            ("control", {"engine": "e1", "verb": "signal", "args": {"signum": signal.SIGTERM, "task": "t2"}}, 20.0),
            ("control", {"engine": "e0", "verb": "exit", "args": {"timeout": 5.0}}, 40.0),
            ("control", {"engine": "e0", "verb": "reset", "args": {"timeout": 1.5}}, 11.5),
        ])

    def test_bad_arguments_fail_before_sending(self):
        self.assertRaises(errors.BadRequest, self.client.signal, "e0", 0)
        self.assertRaises(errors.BadRequest, self.client.beat, "e0", timeout=-1)
        self.assertEqual(self.calls, [])
