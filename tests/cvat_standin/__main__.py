"""Run the stand-in for a manual try-out: ``python -m tests.cvat_standin --port 8080``."""

from __future__ import annotations

import argparse
import sys
import time

from .server import StandinServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.cvat_standin",
                                description="A stand-in CVAT server (in memory) for trying dl_utils.cvat.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (0: any free port)")
    p.add_argument("--token", default=None, help="the access token to accept (default: a random one)")
    p.add_argument("--version", default="2.24.0", help="CVAT version reported by /api/server/about")
    p.add_argument("--share", default=None, help="folder served as the server's share (server_files)")
    a = p.parse_args(argv)
    srv = StandinServer(a.host, a.port, token=a.token, version=a.version, share_root=a.share).start()
    print(f"CVAT stand-in listening on {srv.url}", flush=True)
    print(f"CVAT_HOST={srv.url}", flush=True)
    print(f"CVAT_ACCESS_TOKEN={srv.token}", flush=True)
    print(f"or log in as {srv.state.username} / {srv.state.password}; Ctrl+C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
