"""The node's HTTP face: pages, REST API, DICOMweb, ``/healthz`` and ``/metrics``.

One ASGI application (:func:`daemon.web.app.create_app`) served by uvicorn
on a background thread (:class:`daemon.web.server.WebServer`).
"""
