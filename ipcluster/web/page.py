"""The status page itself: ``static/index.html`` with its stylesheet and script inlined.

The page is one document with no assets from elsewhere: its own inline style
and script (allowed by hash) and the charting library (Chart.js, MIT licence,
``static/chart.umd.min.js`` with ``static/chart.js-LICENSE.md``) served by the
same site at ``/chart.js``.  Its Content-Security-Policy allows exactly those,
fetches and event streams to its own origin, and nothing else.
"""
from __future__ import annotations

import base64
import hashlib
from importlib import resources


def _static(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _page() -> tuple[bytes, bytes]:
    style, script = _static("status.css"), _static("status.js")
    html = _static("index.html")
    for empty, filled in (("<style></style>", f"<style>{style}</style>"), ("<script></script>", f"<script>{script}</script>")):
        if html.count(empty) != 1:
            raise RuntimeError(f"ipcluster/web/static/index.html must hold exactly one {empty}")
        html = html.replace(empty, filled)
    csp = (
        f"default-src 'none'; script-src 'self' {_csp_hash(script)}; style-src {_csp_hash(style)}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html.encode("utf-8"), csp.encode("ascii")


#: The page (UTF-8 HTML) and the Content-Security-Policy it is served with.
PAGE, PAGE_CSP = _page()
#: Chart.js, minified, as shipped in static/ (its licence beside it).
CHART_JS = _static("chart.umd.min.js").encode("utf-8")
