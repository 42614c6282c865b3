"""A submitted function's kept pickle (client/fnpickle.py): used only while it is what pickling
the function again would give, and the payload the engine unpickles means the same."""
from __future__ import annotations

import pickle

from twisted.trial.unittest import SynchronousTestCase

from ipcluster.client.fnpickle import FunctionPickles
from ipcluster.engine.runner import unpack
from ipcluster.transport import buffers


def main_namespace(source: str) -> dict:
    """The globals of a script's ``__main__`` after running ``source`` there."""
    namespace = {"__name__": "__main__"}
    exec(compile(source, "<fnpickle-test>", "exec"), namespace)
    return namespace


class FunctionPicklesTests(SynchronousTestCase):
    def setUp(self):
        self.pickles = FunctionPickles()

    def payload(self, fn, *args):
        """What the engine makes of a task's payload pickled with the kept pickles."""
        payload, bufs = buffers.dumps((fn, args, {}), self.pickles.known(fn))
        return unpack(payload, None, bufs)

    def run_remotely(self, fn, *args):
        remote, remote_args, kwargs = self.payload(fn, *args)
        return remote(*remote_args, **kwargs)

    def test_kept_from_the_second_submit_and_it_runs(self):
        ns = main_namespace("K = 3\ndef f(x=None):\n    return (x, K, len('ab'))\n")
        f = ns["f"]
        self.assertIsNone(self.pickles.known(f), "first seen: pickled as usual")
        known = self.pickles.known(f)
        self.assertEqual(list(known), [f])
        self.assertIs(self.pickles.known(f)[f], known[f], "the same pickle from then on")
        self.assertEqual(self.run_remotely(f, 1), (1, 3, 2))

    def test_a_changed_global_is_never_stale(self):
        ns = main_namespace("K = 1\ndef f():\n    return K\n")
        f = ns["f"]
        for _ in range(3):
            self.assertEqual(self.run_remotely(f), 1)
        ns["K"] = 2
        self.assertEqual(self.run_remotely(f), 2)
        ns["K"] = "two"
        self.assertEqual(self.run_remotely(f), "two")
        del ns["K"]
        self.assertRaises(NameError, self.run_remotely, f)

    def test_a_global_defined_later_is_seen(self):
        ns = main_namespace("def f():\n    return LATER\n")
        f = ns["f"]
        for _ in range(3):
            self.assertRaises(NameError, self.run_remotely, f)
        ns["LATER"] = 5
        self.assertEqual(self.run_remotely(f), 5)

    def test_changed_defaults_code_and_names_are_seen(self):
        ns = main_namespace("def f(x=1):\n    return x\ndef g(x=1):\n    return -x\n")
        f = ns["f"]
        for _ in range(3):
            self.assertEqual(self.run_remotely(f), 1)
        f.__defaults__ = (7,)
        self.assertEqual(self.run_remotely(f), 7)
        f.__code__ = ns["g"].__code__
        self.assertEqual(self.run_remotely(f), -7)
        f.__doc__ = "now documented"
        self.assertEqual(self.payload(f)[0].__doc__, "now documented")

    def test_mutable_state_is_pickled_each_time(self):
        ns = main_namespace(
            "L = [1]\ndef uses_list():\n    return list(L)\n"
            "def helper():\n    return 1\ndef uses_helper():\n    return helper()\n"
            "def with_default(x=[]):\n    return x\n"
            "def annotated(x: int):\n    return x\n"
            "def outer():\n    y = 1\n    def inner():\n        return y\n    return inner\n"
        )
        cases = [ns["uses_list"], ns["uses_helper"], ns["with_default"], ns["annotated"], ns["outer"]()]
        attributed = main_namespace("def f():\n    return f.tag\n")["f"]
        attributed.tag = 1
        cases.append(attributed)
        for fn in cases:
            for _ in range(3):
                self.assertIsNone(self.pickles.known(fn), fn)
        ns["L"].append(2)
        self.assertEqual(self.run_remotely(ns["uses_list"]), [1, 2])

    def test_only_functions_of_main(self):
        self.assertIsNone(self.pickles.known(len))
        self.assertIsNone(self.pickles.known(pickle.dumps))
        for _ in range(3):
            self.assertIsNone(self.pickles.known(main_namespace), "a module's function: pickled by reference")

    def test_the_function_among_its_arguments_stays_one_object(self):
        f = main_namespace("def f(g):\n    return g\n")["f"]
        for _ in range(3):
            remote, (arg,), _ = self.payload(f, f)
            self.assertIs(remote, arg)

    def test_functions_sharing_globals_keep_sharing_them(self):
        """cloudpickle gives functions of one module that travel together one globals dict."""
        ns = main_namespace("def f(g):\n    g()\n    return COUNT\ndef setter():\n    global COUNT\n    COUNT = 9\n")
        f, setter = ns["f"], ns["setter"]
        for _ in range(3):
            self.assertEqual(self.run_remotely(f, setter), 9)
            remote, (arg,), _ = self.payload(f, setter)
            self.assertIs(remote.__globals__, arg.__globals__)

    def test_bounded(self):
        pickles = FunctionPickles(keep=4)
        fns = [main_namespace(f"def f{i}():\n    return {i}\n")[f"f{i}"] for i in range(10)]
        for fn in fns:
            pickles.known(fn)
            self.assertIsNotNone(pickles.known(fn))
        self.assertEqual(len(pickles._kept), 4)
