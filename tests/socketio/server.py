"""A small Socket.IO app for tests/websocket.rs: serves on 127.0.0.1:<port> (argv[1]) with both
the long-polling and the WebSocket transport, so the proxy sees plain HTTP polling requests and
a WebSocket upgrade from the same client.

Events:
- "echo" (with an ack): acknowledges {"echo": <data>, "transport": <current transport>}.
- "shout": emits "reply" back to the sender with the same data (server-initiated message).

Needs: python3 -m pip install "python-socketio[client]" aiohttp
"""

import sys

import engineio.async_drivers.aiohttp as eio_aiohttp
import socketio
from aiohttp import web


class _WholeBody:
    """python-engineio's aiohttp driver reads a polling POST with one `content.read(length)`,
    which returns only the bytes that have arrived so far: a body that reaches the app in more
    than one TCP segment (as it may behind any proxy) is cut short and the packet is lost. Read
    exactly `length` bytes instead, as a WSGI server would."""

    def __init__(self, content):
        self.content = content

    async def read(self, length=-1):
        if length is None or length < 0:
            return await self.content.read()
        return await self.content.readexactly(length)


_translate_request = eio_aiohttp._async["translate_request"]


def _translate_whole_body(request):
    environ = _translate_request(request)
    environ["wsgi.input"] = _WholeBody(request.content)
    return environ


eio_aiohttp._async["translate_request"] = _translate_whole_body

# Short engine.io pings so the application-level heartbeat runs through the proxy too. Origins are
# the proxy's job (its [cors] table), so the app itself accepts any.
sio = socketio.AsyncServer(
    async_mode="aiohttp", cors_allowed_origins="*", ping_interval=1, ping_timeout=5
)
app = web.Application()
sio.attach(app)


@sio.on("echo")
async def echo(sid, data):
    return {"echo": data, "transport": sio.transport(sid)}


@sio.on("shout")
async def shout(sid, data):
    await sio.emit("reply", data, to=sid)


if __name__ == "__main__":
    port = int(sys.argv[1])
    web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=True)
