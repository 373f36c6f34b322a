"""A small HTTP server on the loopback address, serving files a test made: downloads are tested
against it, never against the network."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path


class Server:
    """Serves a folder over HTTP on 127.0.0.1; counts requests; can cut the next one short or
    answer slowly (``delay`` seconds before each response)."""

    def __init__(self, folder: Path, delay: float = 0.0) -> None:
        self.requests = 0
        self.truncate_next = False
        self.delay = delay
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests += 1
                time.sleep(server.delay)
                if server.truncate_next:
                    server.truncate_next = False
                    data = (folder / self.path.lstrip("/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    return
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
