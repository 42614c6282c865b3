"""The Twisted-native client: the same verbs as :class:`Client`, returning Deferreds."""
from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer

from ipcluster import connection, errors
from ipcluster.client.verbs import ControlVerbs
from ipcluster.client.core import ClientCore, TaskResult, submit_options
from ipcluster.transport.security import configure_client


class TwistedClient(ControlVerbs):
    """Use :meth:`connect`; every verb returns a ``Deferred``."""

    def __init__(self, info: connection.ConnectionInfo, reactor, timeout: float) -> None:
        from ipcluster.transport.reactor import DealerSocket, make_factory

        self.info = info
        self.reactor = reactor
        self.timeout = timeout
        self._core = ClientCore(info.key, info.max_message_size)
        self._factory = make_factory(reactor)
        self._socket = DealerSocket(
            self._factory, info.address("client"), self._core.received, name="client",
            configure=lambda sock: configure_client(sock, info),
        )
        self._core.send_back = self._socket.send_frames

    @classmethod
    def connect(cls, connection_file: Optional[str] = None, reactor=None, timeout: float = 10.0) -> defer.Deferred:
        """A Deferred that fires with a connected client, or NoController."""
        if reactor is None:
            from twisted.internet import reactor
        try:
            info = connection.read(connection_file)
        except errors.NoController:
            return defer.fail()
        client = cls(info, reactor, timeout)

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

    def submit(self, fn: Callable, *args: Any, engine: Optional[str] = None, engines=None, after=None,
               retries: Optional[int] = None, timeout: Optional[float] = None, after_failed: Optional[str] = None,
               **kwargs: Any) -> defer.Deferred:
        """Fires with the task's result (or fails with its exception); options as ``Client.submit``.

        The Deferred carries ``task_id``, and once it fires ``engine``,
        ``stdout`` and ``stderr``.  A task too large to send (``PayloadTooLarge``)
        or bad options give a Deferred that has already failed.
        """
        try:
            options = submit_options(engine, engines, after, retries, timeout, after_failed)
        except (TypeError, ValueError):
            return defer.fail()
        done = defer.Deferred()
        try:
            task_id, frames = self._core.submit(fn, args, kwargs, options, lambda r: _deliver(done, r))
        except errors.PayloadTooLarge:
            return defer.fail()
        done.task_id = task_id
        done.engine = None
        done.stdout = done.stderr = ""
        self._socket.send_frames(frames)
        return done

    def map(self, fn: Callable, *iterables: Any, **options: Any) -> defer.Deferred:
        """Fires with the list of results, in order (fails with the first exception)."""
        return defer.gatherResults(
            [self.submit(fn, *args, **options) for args in zip(*iterables)], consumeErrors=True
        ).addErrback(lambda f: f.value.subFailure if f.check(defer.FirstError) else f)

    def fetch(self, task_id: str) -> defer.Deferred:
        """The result of a task submitted earlier, by any client (from the task store if it finished)."""
        done = defer.Deferred()
        done.task_id = task_id
        def deliver(result: TaskResult) -> None:
            _deliver(done, result)

        self._core.expect(task_id, deliver)

        def refused(failure):
            self._core.forget(task_id=task_id, on_result=deliver)
            if not done.called:
                done.errback(failure)

        self._call("fetch", {"task": task_id}, self.timeout).addErrback(refused)
        return done

    def cancel(self, task_id: str) -> defer.Deferred:
        """Remove a task that has not started: fires True if removed (its Deferred fails with TaskAborted)."""
        return self._call("cancel", {"task": str(task_id)}, self.timeout)

    def purge(self, older_than: Optional[float] = None) -> defer.Deferred:
        """Delete stored finished tasks; fires with the count."""
        return self._call("purge", {} if older_than is None else {"older_than": float(older_than)}, self.timeout)

    def _call(self, mtype: str, fields: dict, timeout: float) -> defer.Deferred:
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
        if self._factory is not None:
            self._factory.shutdown()
            self._factory = None
        self._core.fail_all(errors.NoController("client closed"))


def _deliver(done: defer.Deferred, result: TaskResult) -> None:
    if done.called:
        return
    done.engine = result.engine
    done.stdout, done.stderr = result.stdout, result.stderr
    (done.callback if result.ok else done.errback)(result.value)
