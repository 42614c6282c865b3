"""The status page's HTTP resources: ``/``, ``/chart.js``, ``/status.json``, ``/events`` and
``/metrics``, read-only.

Every resource answers GET and HEAD only (405 to anything else), with
``no-store`` caching, ``nosniff``, no referrer and no framing.
"""
from __future__ import annotations

import json

from twisted.web import resource, server

from ipcluster.web.events import EventHub, start_stream
from ipcluster.web.page import CHART_JS, PAGE, PAGE_CSP
from ipcluster.web.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ipcluster.web.prometheus import exposition
from ipcluster.web.view import StatusView


def _common_headers(request, content_type: bytes) -> None:
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"x-frame-options", b"DENY")


class _ReadOnly(resource.Resource):
    """A leaf that answers GET and HEAD, and 405 to any other method."""

    isLeaf = True

    def render(self, request):
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            _common_headers(request, b"text/plain; charset=utf-8")
            return b"read-only: GET or HEAD\n"
        return super().render(request)


class Page(_ReadOnly):
    """``/``: the live HTML page."""

    def render_GET(self, request):
        _common_headers(request, b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", PAGE_CSP)
        return PAGE


class ChartLibrary(_ReadOnly):
    """``/chart.js``: the charting library the page draws with (Chart.js, shipped in ``static/``)."""

    def render_GET(self, request):
        _common_headers(request, b"text/javascript; charset=utf-8")
        request.setHeader(b"cache-control", b"max-age=3600")
        return CHART_JS


class Events(_ReadOnly):
    """``/events``: live updates as server-sent events (see :mod:`ipcluster.web.events`)."""

    def __init__(self, hub: EventHub, hello) -> None:
        super().__init__()
        self.hub = hub
        self.hello = hello

    def render_GET(self, request):
        _common_headers(request, b"text/event-stream; charset=utf-8")
        return start_stream(self.hub, request, self.hello)

    def render_HEAD(self, request):
        _common_headers(request, b"text/event-stream; charset=utf-8")
        return b""


class StatusJson(_ReadOnly):
    """``/status.json``: :meth:`StatusView.status` as JSON."""

    def __init__(self, view: StatusView) -> None:
        super().__init__()
        self.view = view

    def render_GET(self, request):
        _common_headers(request, b"application/json")
        return json.dumps(self.view.status(), allow_nan=False, default=str).encode("utf-8")


class Metrics(_ReadOnly):
    """``/metrics``: the same numbers for Prometheus."""

    def __init__(self, view: StatusView) -> None:
        super().__init__()
        self.view = view

    def render_GET(self, request):
        _common_headers(request, METRICS_CONTENT_TYPE)
        return exposition(self.view.status()).encode("utf-8")


class StatusSite(server.Site):
    """The resources of one view, without an access log (a page that cannot stream polls every second).

    ``events`` (the ``/events`` resource) is left out when None.
    """

    noisy = False
    displayTracebacks = False

    def __init__(self, view: StatusView, events: "Events | None" = None) -> None:
        root = resource.Resource()
        root.putChild(b"", Page())
        root.putChild(b"chart.js", ChartLibrary())
        if events is not None:
            root.putChild(b"events", events)
        root.putChild(b"status.json", StatusJson(view))
        root.putChild(b"metrics", Metrics(view))
        super().__init__(root)

    def log(self, request) -> None:
        """No access log."""
