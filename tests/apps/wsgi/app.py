"""A small WSGI app for streamguard's integration tests: the kind of legacy app server the proxy
must protect, whose parsing differs from Pingora's.

Served by Werkzeug's development server (`--server werkzeug`, which serves a request-target without
a leading slash) or by the standard library's wsgiref (`--server wsgiref`, which folds `_` and `-`
in header names into one CGI variable, as CGI servers do). Every answer is JSON describing what the
app saw, so a test can tell whether an attack reached it.

Routes:
- `/status/<code>`: that status with a reason phrase, headers and body that must never reach a
  client through the proxy (`/status/500?empty=1`: no body at all).
- anything else: `{"server", "method", "path", "query", "raw_uri", "headers": {CGI name: value}}`.
"""

import argparse
import json
import sys


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path.startswith("/status/"):
        code = int(path[len("/status/"):] or "500")
        empty = "empty=1" in environ.get("QUERY_STRING", "")
        body = b"" if empty else b'{"traceback":"File app.py, line 1: secret detail"}'
        start_response(
            f"{code} Traceback (most recent call last) secret",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("X-Debug", "Traceback: secret detail"),
                ("X-Powered-By", "legacy-app/1.0"),
                ("Retry-After", "7"),
            ],
        )
        return [body]
    seen = {
        "server": ARGS.server,
        "method": environ.get("REQUEST_METHOD"),
        "path": path,
        "query": environ.get("QUERY_STRING", ""),
        "raw_uri": environ.get("REQUEST_URI") or environ.get("RAW_URI"),
        "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
    }
    body = json.dumps(seen).encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("X-Powered-By", "legacy-app/1.0"),
        ],
    )
    return [body]


def serve(server, port):
    if server == "werkzeug":
        from werkzeug.serving import run_simple

        run_simple("127.0.0.1", port, app, threaded=True)
    else:
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args):
                pass

        make_server("127.0.0.1", port, app, handler_class=Quiet).serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", choices=["werkzeug", "wsgiref"], required=True)
    parser.add_argument("--port", type=int, required=True)
    ARGS = parser.parse_args()
    sys.stdout.write(f"serving {ARGS.server} on {ARGS.port}\n")
    sys.stdout.flush()
    serve(ARGS.server, ARGS.port)
