"""The seams of ipcluster, as zope interfaces.

Every implementation, in-memory fakes included, is checked with
``zope.interface.verify.verifyObject`` in the tests.
"""
from __future__ import annotations

from zope.interface import Attribute, Interface


class IEngineControl(Interface):
    """Commands to one engine over its control channel.

    They bypass the engine's task queue, so they are answered while the engine
    runs a task (unless its interpreter is held by a C call: then the engine is
    *busy* and commands wait, up to their timeout).  Every method returns a
    ``Deferred``; it errbacks with ``ControlTimeout`` after ``timeout`` seconds,
    and with ``EngineDead`` when the engine dies first.
    """

    engine_id = Attribute("The engine's id (str).")

    def beat(timeout=None):
        """Round trip through the engine's Python control thread.

        Fires with the round-trip time in seconds.
        """

    def abort(task_id, timeout=None):
        """Remove a queued task from the engine.

        Fires with ``"aborted"`` (removed; its future fails with TaskAborted),
        ``"running"`` (it is running; use ``signal`` to interrupt it) or
        ``"unknown"`` (not queued there: finished, or never sent).
        """

    def signal(signum, task_id=None, timeout=None):
        """Send signal ``signum`` to the engine process.

        With ``task_id``, only if that task is running (SIGINT then interrupts
        just that task).  Fires with True if the signal was sent, False if the
        task was not running.
        """

    def exit(timeout=5.0):
        """Ask the engine to exit.

        Queued tasks are dropped (they fail with EngineDied), a running task
        gets ``timeout`` seconds to finish and is then interrupted.  Fires
        with None once the engine has left.
        """

    def reset(timeout=None):
        """Clear the engine's namespace and drop its queued tasks.

        Fires with the number of queued tasks dropped.
        """

