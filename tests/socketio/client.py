"""Socket.IO client for tests/websocket.rs: talks to server.py through the proxy (argv[1], e.g.
http://127.0.0.1:8080) as a page of origin argv[2] would (every request, polling or WebSocket
handshake, carries that Origin), three times, with the transport plans a browser would use:

1. polling first, then the upgrade to WebSocket (the default);
2. WebSocket only;
3. polling only.

Each session sends a text and a binary payload (with acks), a large payload, and asks for a
server-initiated event, then disconnects. Prints one JSON line per session:
{"plan": [...], "transport": <transport at the end>}. Exits non-zero on any failure.

Needs: python3 -m pip install "python-socketio[client]" aiohttp
"""

import json
import sys
import threading

import socketio

URL = sys.argv[1]
ORIGIN = sys.argv[2]
TIMEOUT = 10
PLANS = [["polling", "websocket"], ["websocket"], ["polling"]]


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def session(plan):
    # The Origin header below goes on the WebSocket handshake too; websocket-client would add a
    # second one of its own (which the proxy rightly refuses) unless told not to.
    sio = socketio.Client(
        reconnection=False, websocket_extra_options={"suppress_origin": True}
    )
    replies = []
    got_reply = threading.Event()

    @sio.on("reply")
    def on_reply(data):
        replies.append(data)
        got_reply.set()

    sio.connect(URL, transports=plan, headers={"Origin": ORIGIN}, wait_timeout=TIMEOUT)
    try:
        ack = sio.call("echo", "hello through the proxy", timeout=TIMEOUT)
        if ack["echo"] != "hello through the proxy":
            fail(f"{plan}: bad text echo {ack!r}")
        binary = bytes(range(256)) * 4
        ack = sio.call("echo", {"bin": binary}, timeout=TIMEOUT)
        if ack["echo"]["bin"] != binary:
            fail(f"{plan}: binary attachment altered")
        # Larger than any single read: it crosses the proxy in many pieces.
        big = "x" * 200_000
        ack = sio.call("echo", big, timeout=TIMEOUT)
        if ack["echo"] != big:
            fail(f"{plan}: large payload altered ({len(ack['echo'])} bytes back)")
        sio.emit("shout", {"n": 1})
        if not got_reply.wait(TIMEOUT) or replies != [{"n": 1}]:
            fail(f"{plan}: server-initiated event missing: {replies!r}")
        # Outlive a few engine.io ping cycles and proxy pings: the session must survive them.
        sio.sleep(2.5)
        ack = sio.call("echo", "still alive", timeout=TIMEOUT)
        if ack["echo"] != "still alive":
            fail(f"{plan}: bad echo after idling {ack!r}")
        transport = sio.transport()
        if transport != ack["transport"]:
            fail(f"{plan}: client on {transport}, server on {ack['transport']}")
        print(json.dumps({"plan": plan, "transport": transport}), flush=True)
    finally:
        sio.disconnect()


for plan in PLANS:
    session(plan)
