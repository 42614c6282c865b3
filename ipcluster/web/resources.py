"""The status page's HTTP resources: ``/``, ``/status.json`` and ``/metrics``, read-only.

Every resource answers GET and HEAD only (405 to anything else), with
``no-store`` caching, ``nosniff``, no referrer and no framing.
"""
from __future__ import annotations

import json

from twisted.web import resource, server

from ipcluster.web.page import PAGE, PAGE_CSP
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
    """The three resources of one view, without an access log (an open page polls every second)."""

    noisy = False
    displayTracebacks = False

    def __init__(self, view: StatusView) -> None:
        root = resource.Resource()
        root.putChild(b"", Page())
        root.putChild(b"status.json", StatusJson(view))
        root.putChild(b"metrics", Metrics(view))
        super().__init__(root)

    def log(self, request) -> None:
        """No access log."""
