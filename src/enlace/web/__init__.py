"""enlace's web server: HTTP/1.1 static files on enlace's asyncio socket layer.

:class:`~enlace.web.server.WebServer` serves a directory (by default the
built-in site: a home page listing the running services and the browser chat)
and hands ``/ws`` WebSocket upgrades to an endpoint (the chat bridge).
"""

from __future__ import annotations

from enlace.web.pages import SITE, ServiceInfo
from enlace.web.server import WebServer, WebServerThread

__all__ = ["SITE", "ServiceInfo", "WebServer", "WebServerThread"]
