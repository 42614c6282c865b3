"""The live status page: ``/`` (HTML), ``/events`` (pushed updates), ``/status.json`` and
``/metrics`` (Prometheus).

``web_service(controller, "tcp:8080:interface=127.0.0.1")`` is a Twisted
service that serves, from twisted.web:

``/``
    a page (no assets from elsewhere: the charts are drawn with Chart.js,
    served as ``/chart.js``) that listens to ``/events`` and shows a task
    stream (a lane per engine, a bar per task run coloured by outcome), tasks
    per second and queued tasks over the last five minutes, each local
    engine's RSS and CPU, the engines (id, host, pid, state, heartbeat RTT,
    running task and for how long, busy-for, queued tasks), the number of engines in each state,
    tasks in flight, queued in the controller, completed, failed and per
    second, engines that died or whose registration was purged, and dropped
    messages by socket and reason.  Each engine row carries
    ``data-engine-id`` and ``data-state`` attributes.
``/events``
    the same data pushed as server-sent events (a ``hello`` with the last
    minutes, a ``tick`` every second, ``runs`` as tasks end; see
    :mod:`ipcluster.web.events`), which the page listens to (it polls
    ``status.json`` only where it cannot stream);
``/status.json``
    the same data as JSON (see :meth:`ipcluster.web.view.StatusView.status`).
``/metrics``
    the same numbers in the Prometheus text exposition format (0.0.4; the
    families are listed in :mod:`ipcluster.web.prometheus`).

The package: :mod:`~ipcluster.web.view` (the data, read through the
controller's ``IStatusSource``), :mod:`~ipcluster.web.history` (the charts'
rings of samples and task runs), :mod:`~ipcluster.web.events` (the event
streams and their bounds), :mod:`~ipcluster.web.prometheus` (the
metrics), :mod:`~ipcluster.web.page` (the page, kept in ``static/``),
:mod:`~ipcluster.web.resources` (HTTP) and this module (the service).

Security: these pages are **read-only and unauthenticated**.  They answer only
GET and HEAD, run no control verb and never show the cluster's key or
connection file, but anyone who can reach the port can read engine hosts,
pids, task ids and failure reasons.  The service binds exactly what its
endpoint says, and a TCP endpoint that names no interface binds loopback
(``tcp:8080`` is ``tcp:8080:interface=127.0.0.1``): reach it from elsewhere
through an SSH tunnel or an authenticating reverse proxy.  Binding another
interface on purpose is logged as a warning.

Tasks per second are measured on the controller with the reactor's clock:
the finished (completed + failed) count is sampled every second and the rate is
taken over the last ``rate_window`` (10 s).  "Recent" dropped messages are
those of the last ``drops_window`` (60 s).
"""
from __future__ import annotations

from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall

from ipcluster.interfaces import IStatusSource
from ipcluster.listening import ListeningService, loopback_by_default
from ipcluster.web.events import MAX_PENDING, MAX_STREAMS, EventHub, frame
from ipcluster.web.history import History
from ipcluster.web.resources import Events, StatusSite
from ipcluster.web.view import SAMPLE_PERIOD, StatusView

__all__ = ["web_service", "WebService"]


class WebService(ListeningService):
    """Serves the status pages of one ``IStatusSource`` on one Twisted server endpoint.

    A :class:`~ipcluster.listening.ListeningService` (``listening()``,
    ``address``, ``port``, ``factory``) that, while it runs, samples the
    source's counters every second (``view``, ``history``), records engine
    failures and task runs, and pushes them to the open event streams
    (``events``: at most ``max_streams``, each at most ``max_pending`` bytes behind).
    """

    def __init__(
        self, source: IStatusSource, endpoint: str, reactor, max_streams: int = MAX_STREAMS, max_pending: int = MAX_PENDING
    ) -> None:
        self.view = StatusView(source, reactor)
        self.events = EventHub(reactor, max_streams, max_pending)
        self.history = History(source, reactor, on_run=self.events.run)
        self.site = StatusSite(self.view, Events(self.events, self._hello))
        # A bad description fails here, at once.
        super().__init__("web", serverFromString(reactor, endpoint), endpoint, self.site,
                         label="status page", unauthenticated=True)  # fmt: skip
        self._sampler = LoopingCall(self._tick)
        self._sampler.clock = reactor

    def _hello(self) -> bytes:
        return frame("hello", {"status": self.view.status(), **self.history.snapshot()})

    def _tick(self) -> None:
        self.view.sample()
        sample = self.history.sample()
        if self.events.streams:  # serialised once for every open page
            self.events.broadcast(frame("tick", {"status": self.view.status(), "sample": sample}))

    def startService(self) -> None:
        super().startService()
        self.view.watch()
        self.history.watch()
        self._sampler.start(SAMPLE_PERIOD, now=False)

    def stopService(self):
        self.view.unwatch()
        self.history.unwatch()
        self.events.close()
        if self._sampler.running:  # not running if startService never came
            self._sampler.stop()
        return super().stopService()


def web_service(controller, endpoint: str, reactor=None, **limits) -> service.IService:
    """The status pages of ``controller`` (read through ``controller.status``) as a service on ``endpoint``.

    ``endpoint`` is a Twisted server endpoint description such as
    ``"tcp:8080"`` (``tcp:0`` picks a free port: read ``.port`` after start,
    or wait on ``.listening()``).  Unauthenticated and read-only, so a TCP
    endpoint without an interface (or a bare port) binds 127.0.0.1; name
    another interface (``interface=0.0.0.0``) to serve beyond this host.  ``reactor`` defaults to the
    controller's; ``limits`` (``max_streams``, ``max_pending``) bound the event streams.
    """
    reactor = controller.reactor if reactor is None else reactor
    return WebService(controller.status, loopback_by_default(endpoint), reactor, **limits)
