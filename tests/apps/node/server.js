// A WebSocket echo app on the `ws` package with permessage-deflate on: the kind of app server
// streamguard stands in front of, and the one that makes its WebSocket attacks bite. `ws` reads
// the bytes that follow an upgrade request's head as frames (a request body included), and with
// compression it inflates messages far past their wire size.
//
// It records what reached it and serves the record as JSON on `GET /stats`, on the same port:
// every handshake (its path, the extension offer it carried, how many bytes came with the head
// before the 101), the messages it got (count and the largest size after inflation), the pings,
// the close codes and the errors `ws` reported.
//
// Usage: node server.js PORT   (binds 127.0.0.1:PORT)
'use strict';

const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  console.error('usage: node server.js PORT');
  process.exit(2);
}

const stats = {
  handshakes: [],
  open: 0,
  messages: 0,
  largestMessage: 0,
  pings: 0,
  closeCodes: [],
  errors: [],
};

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/stats') {
    res.writeHead(200, { 'content-type': 'application/json', connection: 'close' });
    res.end(JSON.stringify(stats));
    return;
  }
  res.writeHead(404, { 'content-type': 'application/json', connection: 'close' });
  res.end('{"error":"not found"}');
});

// The app sets no limit of its own worth the name: what it receives is what the proxy let by.
const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: true,
  maxPayload: 256 * 1024 * 1024,
});

server.on('upgrade', (req, socket, head) => {
  stats.handshakes.push({
    path: req.url,
    extensions: req.headers['sec-websocket-extensions'] ?? null,
    // Bytes read along with the head: `ws` parses them as the connection's first frames.
    early: head.length,
  });
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});

wss.on('connection', (ws) => {
  stats.open += 1;
  ws.on('message', (data, isBinary) => {
    stats.messages += 1;
    stats.largestMessage = Math.max(stats.largestMessage, data.length);
    ws.send(data, { binary: isBinary });
  });
  ws.on('ping', () => {
    stats.pings += 1;
  });
  ws.on('error', (err) => {
    stats.errors.push(String(err.code || err.message));
  });
  ws.on('close', (code) => {
    stats.open -= 1;
    stats.closeCodes.push(code);
  });
});

server.listen(port, '127.0.0.1', () => {
  console.log(`listening on 127.0.0.1:${port}`);
});
