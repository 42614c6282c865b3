"""The Twisted-native client: the same verbs as :class:`Client`, returning Deferreds.

The Executor contract, where Deferreds allow it: ``submit(fn, /, *args,
**kwargs)`` (``options(...)`` as the blocking client's); ``d.cancel()`` stops
waiting (the Deferred fails with ``CancelledError`` at once, as Twisted
requires) and asks the controller to cancel the task; ``cancel(d)`` fires with
the controller's decision.  ``d.running`` turns True when the controller says
the task started.  ``shutdown()`` waits for the pending Deferreds (cancelling
the unstarted tasks first with ``cancel_futures``), ``close()`` gives up on
them; after either, ``submit`` fails with RuntimeError.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer, task
from twisted.logger import Logger

from ipcluster import connection, errors
from ipcluster.client.options import TaskOptions
from ipcluster.client.verbs import ControlVerbs, task_id_of
from ipcluster.client.core import ClientCore, TaskResult, submit_options, take_options
from ipcluster.client.watch import DEFAULT_GIVE_UP_AFTER, DEFAULT_RESTART_WAIT, ControllerWatch
from ipcluster.transport.security import configure_client


class TwistedClient(ControlVerbs):
    """Use :meth:`connect`; every verb returns a ``Deferred``."""

    log = Logger()

    def __init__(self, info: connection.ConnectionInfo, reactor, timeout: float, controller_timeout: float = 20.0,
                 restart_wait: float = DEFAULT_RESTART_WAIT, give_up_after: float = DEFAULT_GIVE_UP_AFTER) -> None:
        from ipcluster.transport.reactor import DealerSocket, make_factory

        self.info = info
        self.reactor = reactor
        self.timeout = timeout
        self._core = ClientCore(info.key, info.max_message_size)
        # A silent controller, with something pending: probed, and judged as the blocking client's is.
        self._watch = ControllerWatch(info, controller_timeout, restart_wait, give_up_after)
        self._probe_every = min(5.0, controller_timeout / 3)
        self._heard = self._probed = reactor.seconds()
        self._pending: dict[str, defer.Deferred] = {}  # unfinished tasks' Deferreds, by task id
        self._idle: list[defer.Deferred] = []  # shutdown()s waiting for no task to be pending
        self._shutdown = False
        self._factory = make_factory(reactor)
        self._socket = DealerSocket(
            self._factory, info.address("client"), self._received, name="client",
            configure=lambda sock: configure_client(sock, info),
        )
        self._core.send_back = self._socket.send_frames
        self._checker = task.LoopingCall(self._check)
        self._checker.clock = reactor
        self._checker.start(min(1.0, self._probe_every), now=False)

    def _received(self, frames: list) -> None:
        self._heard = self.reactor.seconds()
        self._core.received(frames)

    def _check(self) -> None:
        """Probe a silent controller (a restarted one gives a new session: the core resumes), and
        fail what is pending once it is gone (``client/watch.py``)."""
        now = self.reactor.seconds()
        if not self._core.waiting():
            self._heard = now
            return
        gone = self._watch.verdict(now - self._heard, now)
        if gone is not None:
            self._heard = now
            self._core.fail_all(errors.NoController(f"the controller at {self.info.address('client')} {gone}"))
        elif now - self._heard > self._probe_every and now - self._probed > self._probe_every:
            self._probed = now
            _, frames = self._core.request("connect", {}, lambda ok, value: None)
            self._socket.send_frames(frames)

    @classmethod
    def connect(cls, connection_file: Optional[str] = None, reactor=None, timeout: float = 10.0,
                **watch: float) -> defer.Deferred:
        """A Deferred that fires with a connected client, or NoController.  ``watch``: the
        ``controller_timeout``, ``restart_wait`` and ``give_up_after`` of ``Client``."""
        if reactor is None:
            from twisted.internet import reactor
        try:
            info = connection.read(connection_file)
        except errors.NoController:
            return defer.fail()
        client = cls(info, reactor, timeout, **watch)

        def no_answer(failure):
            client.close()
            failure.trap(errors.NoController)
            raise errors.NoController(
                f"no controller answered at {info.address('client')} within {timeout:g} s "
                f"(connection file {info.path}); is it running?"
            )

        return client._call("connect", {}, timeout).addCallbacks(lambda _: client, no_answer)

    def engines(self) -> defer.Deferred:
        return self._call("engines", {}, self.timeout)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> defer.Deferred:
        """Fires with the task's result (or fails with its exception); options as ``Client.submit``.

        The Deferred carries ``task_id``, ``running`` (True once the controller
        says the task started), and once it fires ``engine``, ``stdout`` and
        ``stderr``.  ``d.cancel()``: see the module's docstring.  A task too
        large to send (``PayloadTooLarge``) or bad options give a Deferred that
        has already failed.
        """
        try:
            options = submit_options(**take_options(kwargs))
        except (TypeError, ValueError):
            return defer.fail()
        return self._submit(fn, args, kwargs, options)

    def options(self, **options: Any) -> TaskOptions:
        """A view whose ``submit``/``map`` use these options and pass every keyword to the task."""
        return TaskOptions(self, options)

    def _submit(self, fn: Callable, args: tuple, kwargs: dict, options: dict) -> defer.Deferred:
        if self._shutdown:
            return defer.fail(RuntimeError("cannot submit tasks after the client was shut down"))
        done = _task_deferred(self._stop_waiting)
        try:
            task_id, frames = self._core.submit(fn, args, kwargs, options, lambda r: self._deliver(done, r),
                                                lambda engine: _started(done, engine))
        except errors.PayloadTooLarge:
            return defer.fail()
        done.task_id = task_id
        self._pending[task_id] = done
        self._socket.send_frames(frames)
        return done

    def map(self, fn: Callable, /, *iterables: Any, **options: Any) -> defer.Deferred:
        """Fires with the list of results, in order (fails with the first exception).

        Cancelling it cancels every task's Deferred."""
        try:
            checked = submit_options(**options)
        except (TypeError, ValueError):
            return defer.fail()
        return self._map(fn, iterables, checked)

    def _map(self, fn: Callable, iterables: tuple, options: dict) -> defer.Deferred:
        return defer.gatherResults(
            [self._submit(fn, args, {}, options) for args in zip(*iterables)], consumeErrors=True
        ).addErrback(lambda f: f.value.subFailure if f.check(defer.FirstError) else f)

    def fetch(self, task_id: str) -> defer.Deferred:
        """The result of a task submitted earlier, by any client (from the task store if it finished)."""
        done = _task_deferred(self._stop_waiting)
        done.task_id = task_id

        def deliver(result: TaskResult) -> None:
            self._deliver(done, result)

        self._core.expect(task_id, deliver, lambda engine: _started(done, engine))
        self._pending.setdefault(task_id, done)

        def refused(failure):
            self._core.forget(task_id=task_id, on_result=deliver)
            self._settled(task_id, done)
            if not done.called:
                done.errback(failure)

        self._call("fetch", {"task": task_id}, self.timeout).addErrback(refused)
        return done

    def cancel(self, task) -> defer.Deferred:
        """Ask the controller to cancel a task (its Deferred, or an id) that has not started: fires
        True exactly when it will never run (its Deferred has failed with CancelledError then)."""
        return self._call("cancel", {"task": task_id_of(task)}, self.timeout)

    def purge(self, older_than: Optional[float] = None) -> defer.Deferred:
        """Delete stored finished tasks; fires with the count."""
        return self._call("purge", {} if older_than is None else {"older_than": float(older_than)}, self.timeout)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> defer.Deferred:
        """Take no new tasks; close once the pending ones are done (``cancel_futures``: cancel the
        unstarted ones on the cluster first).  Fires when closed, or at once without ``wait``."""
        self._shutdown = True
        unstarted = [d for d in self._pending.values() if not d.running]
        cancels = [self.cancel(d) for d in unstarted] if cancel_futures and self._factory is not None else []
        closed = defer.gatherResults(cancels, consumeErrors=True).addErrback(self._log_failure, "cancelling tasks")
        closed.addCallback(lambda _: self._when_idle()).addCallback(lambda _: self.close())
        if wait:
            return closed
        closed.addErrback(self._log_failure, "shutting down")
        return defer.succeed(None)

    def _when_idle(self) -> defer.Deferred:
        if not self._pending:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle.append(d)
        return d

    def _log_failure(self, failure, doing: str) -> None:
        self.log.failure("TwistedClient: {doing}", failure, doing=doing)

    def _stop_waiting(self, done: defer.Deferred) -> None:
        """``done.cancel()``: stop waiting (Twisted fails it with CancelledError) and ask the
        controller to cancel the task, without waiting for its answer."""
        self._core.forget(task_id=done.task_id)
        self._settled(done.task_id, done)
        if self._factory is not None:
            _, frames = self._core.request("cancel", {"task": done.task_id}, lambda ok, value: None)
            self._socket.send_frames(frames)

    def _deliver(self, done: defer.Deferred, result: TaskResult) -> None:
        if not done.called:
            done.engine = result.engine
            done.stdout, done.stderr = result.stdout, result.stderr
            if not result.ok and isinstance(result.value, errors.TaskCancelled):
                done.errback(defer.CancelledError(str(result.value)))
            else:
                (done.callback if result.ok else done.errback)(result.value)
        self._settled(result.task_id, done)  # after it fired: a shutdown waiting for it ends now

    def _settled(self, task_id: str, done: defer.Deferred) -> None:
        if self._pending.get(task_id) is done:
            del self._pending[task_id]
        if not self._pending:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def _call(self, mtype: str, fields: dict, timeout: float) -> defer.Deferred:
        if self._factory is None:
            return defer.fail(errors.NoController("this client is closed"))
        d = defer.Deferred()
        timer = None

        def on_reply(ok: bool, value: Any) -> None:
            if timer is not None and timer.active():
                timer.cancel()
            if not d.called:
                (d.callback if ok else d.errback)(value)

        msg_id, frames = self._core.request(mtype, fields, on_reply)
        timer = self.reactor.callLater(
            timeout,
            self._core.expire,
            msg_id,
            errors.NoController(f"the controller did not answer {mtype!r} within {timeout:g} s"),
        )
        self._socket.send_frames(frames)
        return d

    def close(self) -> None:
        """Close now: pending Deferreds fail with NoController (their tasks go on on the cluster)."""
        self._shutdown = True
        if self._checker.running:
            self._checker.stop()
        if self._factory is not None:
            self._factory.shutdown()
            self._factory = None
        self._core.fail_all(errors.NoController("client closed"))


def _task_deferred(canceller: Callable[[defer.Deferred], None]) -> defer.Deferred:
    done = defer.Deferred(canceller)
    done.task_id = ""
    done.engine = None
    done.stdout = done.stderr = ""
    done.running = False
    return done


def _started(done: defer.Deferred, engine: str) -> None:
    done.running = True
    if engine:
        done.engine = engine
