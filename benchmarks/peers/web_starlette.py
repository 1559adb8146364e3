"""Benchmark peer: uvicorn (uvloop, httptools) serving starlette's StaticFiles.

python benchmarks/peers/web_starlette.py DIR PORT
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

if __name__ == "__main__":
    root, port = sys.argv[1], int(sys.argv[2])
    app = Starlette(routes=[Mount("/", StaticFiles(directory=root))])
    print(f"listening on 127.0.0.1:{port}", flush=True)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
