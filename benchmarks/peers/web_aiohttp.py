"""Benchmark peer: aiohttp's static route, on uvloop.

python benchmarks/peers/web_aiohttp.py DIR PORT
"""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web

if __name__ == "__main__":
    root, port = sys.argv[1], int(sys.argv[2])
    app = web.Application()
    app.router.add_static("/", root)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
