"""The seams of ipcluster, as zope interfaces.

Every implementation, in-memory fakes included, is checked with
``zope.interface.verify.verifyObject`` in the tests.
"""
from __future__ import annotations

from zope.interface import Attribute, Interface


class IEngineControl(Interface):
    """Commands to one engine over its control channel (the verbs of ``ipcluster.verbs``).

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

    def abort(task_id, timeout=None, release=False):
        """Remove a queued task from the engine.

        Fires with ``"aborted"`` (removed; its future fails with TaskAborted),
        ``"running"`` (it is running; use ``signal`` to interrupt it) or
        ``"unknown"`` (not queued there: finished, or never sent).  With
        ``release`` (the scheduler's use, never a client's) a removed task fires
        ``"released"`` and gets no TaskAborted result: it is about to run elsewhere.
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


class ITaskStore(Interface):
    """Where finished (and unfinished) tasks are recorded.

    Writes are fire and forget; :meth:`committed` tells when they are durable.
    The scheduler sends a result to its clients only once the write that records
    it is committed, so a result a client has seen survives a controller crash.
    """

    max_age = Attribute("Seconds a finished task is kept (None: forever).")
    max_tasks = Attribute("Most finished tasks kept (None: no limit).")

    def submitted(task_id, name, submitted_at, payload=None, options=None):
        """Record a new task (fire and forget), with what a restarted controller needs to run it
        again: ``payload`` (None: too large to keep) and ``options`` (a dict: engines, after,
        retries, timeout, after_failed)."""

    def started(task_id, engine, started_at):
        """Record that ``engine`` started the task (fire and forget)."""

    def finished(task_id, ok, finished_at, engine, error, result, stdout, stderr, not_kept=None):
        """Record the outcome (fire and forget).  ``error`` is a dict or None.  ``not_kept``: the
        size of a result that is not written (``result`` and the output are then None/empty)."""

    def committed():
        """Deferred: fires once every write made before this call is durable (group commit:
        one transaction serves every caller of one reactor turn).  Durable means a restarted
        store has it: committed, or in a journal it replays at open (``store/journal.py``).  Fails
        if the write failed before it was durable; a failure after (the commit of a journaled
        batch) is logged by the store."""

    def unfinished():
        """Deferred: the records of tasks not finished (submitted or running), oldest first, each
        with ``payload`` (bytes or None) and ``options`` (a dict) besides the usual keys."""

    def get(task_id):
        """Deferred: the task's record as a dict, or None if unknown."""

    def purge(older_than=None):
        """Deferred: delete finished tasks (those finished ``older_than`` seconds ago or more); the count."""

    def close():
        """Deferred: flush and close."""


class ILauncher(Interface):
    """Starts engine processes somewhere and watches them.

    The local launcher starts them on this host; others (SSH, batch systems)
    start them elsewhere.  Engines started by a launcher register like any
    other; the launcher only knows their processes.
    """

    def start(engine_ids):
        """Start one engine per id.  Deferred: fires with the ids started once their processes run."""

    def stop(timeout=5.0):
        """Stop every engine this launcher started (SIGTERM, then SIGKILL after ``timeout``).

        Deferred: fires with None once all have ended.
        """

    def signal(engine_id, signum):
        """Send ``signum`` to one engine's process; True if it was running."""

    def running():
        """``{engine_id: pid}`` of the engines whose processes run now."""

    def ended(engine_id):
        """Why that engine's process ended (``"killed by signal 9"``, ...), or None if it runs or is unknown."""

    def is_local(engine_id):
        """Whether ``engine_id`` names a process this launcher started (and watches)."""


class IStatusSource(Interface):
    """What the operator surfaces read of a running controller.

    The status page, the manhole and the ``engines`` request read the
    controller only through this, never through the scheduler's or the
    registry's internals.  Every method is cheap enough to call once a
    second; none changes anything.
    """

    def now():
        """The controller's clock, in seconds (Unix time on a real reactor)."""

    def engines():
        """Every known engine as a plain dict (``EngineRecord.describe`` plus ``assigned``,
        ``local``, ``joined_at``, ``ended_at``, ``last_pong_ago``, and the supervision of the
        controller's own engines: ``supervisor`` (``running``, ``backing off``, ``given up``,
        ``exited``, ``stopping``, ...; None for engines it did not start), ``restarts``,
        ``next_restart_at``, ``last_exit``, ``rss``, ``launcher`` (a batch system's word on the
        engine's job: ``slurm job 42_3 PENDING (Resources)``, else None); an engine whose job is
        queued but that has not registered yet is listed ``registering``), in natural id order."""

    def tasks():
        """Task counters as a plain dict: ``in_flight``, ``waiting``, ``ready``, ``by_state``,
        ``queued_on_engines``, ``completed``, ``failed``, ``retried``, ``stolen``."""

    def drops():
        """``{(socket, reason): count}`` of bad input dropped since the controller started."""

    def controller():
        """The controller itself: ``pid``, ``ip``, ``ports``, ``heartbeat_period``,
        ``heartbeat_misses``, ``data_dir``."""

    def usage():
        """``{engine_id: {"rss": bytes or None, "cpu": CPU seconds used or None}}`` of the engines
        whose processes the controller can read (those it started itself)."""

    def subscribe_runs(listener):
        """Call ``listener(run)`` as each task run ends: ``run`` is ``{"task", "name", "engine",
        "start", "end", "outcome"}`` with outcome ``ok``, ``failed``, ``retried`` or ``cancelled``."""

    def unsubscribe_runs(listener):
        """Stop calling ``listener`` with runs."""

    def subscribe(listener):
        """Call ``listener(event, engine_description, reason)`` at each engine event."""

    def unsubscribe(listener):
        """Stop calling ``listener``."""
