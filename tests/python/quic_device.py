"""A QUIC device written from docs/device-protocol.md ("QUIC") alone, in Python with aioquic.

edgecar's own client is Rust on quinn; this one shares no code with it, so a passing run shows
that the document is enough to write a client in another language. Run by
tests/tests/devices_quic_python.rs:

    quic_device.py <port> <cert.pem> <device id> <password>

It checks each reply against what the document says, printing one line per step; after
"READY" it serves one command and one subscribed event from the gateway, then exits 0. Any
mismatch exits 1 with the reason.
"""

import asyncio
import json
import ssl
import struct
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamDataReceived

ALPN = "edgecar-device/1"


def frame(header, body=b""):
    """One header frame (4-byte big-endian length, JSON), then the raw body."""
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + body


def unframe(data):
    (n,) = struct.unpack(">I", data[:4])
    return json.loads(data[4 : 4 + n]), data[4 + n :]


class Device(QuicConnectionProtocol):
    """Streams this side opened wait for their reply; streams the gateway opens are pushes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffers = {}
        self.replies = {}
        self.pushes = asyncio.Queue()
        self.closed = asyncio.get_event_loop().create_future()

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            buf = self.buffers.setdefault(event.stream_id, bytearray())
            buf += event.data
            if event.end_stream:
                data = bytes(self.buffers.pop(event.stream_id))
                waiter = self.replies.pop(event.stream_id, None)
                if waiter is not None:
                    waiter.set_result(data)
                else:
                    self.pushes.put_nowait((event.stream_id, data))
        elif isinstance(event, ConnectionTerminated):
            if not self.closed.done():
                self.closed.set_result((event.error_code, event.reason_phrase))
            for waiter in self.replies.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError(f"closed: {event.error_code:#x}"))

    def send(self, header, body=b""):
        """Opens a stream with one request; returns the future of its reply's bytes."""
        stream = self._quic.get_next_available_stream_id()
        reply = asyncio.get_event_loop().create_future()
        self.replies[stream] = reply
        self._quic.send_stream_data(stream, frame(header, body), end_stream=True)
        self.transmit()
        return reply

    async def request(self, header, body=b""):
        return unframe(await asyncio.wait_for(self.send(header, body), 10))

    def answer(self, stream, header, body=b""):
        self._quic.send_stream_data(stream, frame(header, body), end_stream=True)
        self.transmit()


def config(cert):
    c = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name="localhost")
    # The self-signed certificate, pinned: it is the only root.
    c.verify_mode = ssl.CERT_REQUIRED
    c.load_verify_locations(cafile=cert)
    return c


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)


async def main(port, cert, device, password):
    # A wrong password: the connection is closed with application code 0x1.
    async with connect("127.0.0.1", port, configuration=config(cert), create_protocol=Device) as c:
        reply = c.send({"op": "auth", "params": {"id": device, "password": "wrong"}})
        reply.add_done_callback(lambda f: f.exception())
        code, reason = await asyncio.wait_for(c.closed, 10)
        check(code == 0x1, f"wrong password closed with {code:#x} {reason!r}, not 0x1")
        print(f"refused {code:#x} {reason}", flush=True)

    async with connect("127.0.0.1", port, configuration=config(cert), create_protocol=Device) as c:
        head, body = await c.request({"op": "auth", "params": {"id": device, "password": password}})
        check(head.get("status") == 200, f"auth: {head}")
        check(head.get("meta", {}).get("device") == device, f"auth names the device: {head}")
        print("auth 200", flush=True)

        save = [{"key": "temp", "value": 21.5}]
        head, _ = await c.request({"op": "state.save", "id": "r1"}, json.dumps(save).encode())
        check(head.get("status") == 204, f"state.save: {head}")
        check(head.get("id") == "r1", f"the id is echoed: {head}")
        head, body = await c.request({"op": "state.get", "params": {"key": "temp"}})
        check(head.get("status") == 200 and body == b"21.5", f"state.get: {head} {body!r}")
        check(head.get("meta", {}).get("etag"), f"state.get carries an etag: {head}")
        print(f"state.get 200 {body.decode()} etag={head['meta']['etag']}", flush=True)

        reading = bytes(range(256))
        head, _ = await c.request({"op": "telemetry", "params": {"stream": "oven/raw"}}, reading)
        check(head.get("status") == 204, f"telemetry: {head}")
        print("telemetry 204", flush=True)

        head, body = await c.request({"op": "frobnicate"})
        error = json.loads(body)
        check(head.get("status") == 404, f"unknown op: {head}")
        check(error.get("errorCode") == "ERR_NOT_FOUND", f"unknown op body: {body!r}")
        print("frobnicate 404 ERR_NOT_FOUND", flush=True)

        head, body = await c.request({"op": "devices.subscribe", "params": {"topic": "alerts"}})
        check(head.get("status") in (200, 201), f"subscribe: {head} {body!r}")
        print(f"subscribe {head['status']}", flush=True)

        print("READY", flush=True)
        seen = set()
        while seen != {"command", "event"}:
            stream, data = await asyncio.wait_for(c.pushes.get(), 30)
            head, body = unframe(data)
            kind = head.get("kind")
            if kind == "command":
                print(f"command {head.get('verb')} {head.get('method')} {body.decode()}", flush=True)
                c.answer(stream, {"status": 201, "contentType": "application/json"}, b'{"lit":true}')
            elif kind == "event":
                event = json.loads(body)
                print(f"event {head.get('topic')} {json.dumps(event.get('data'))}", flush=True)
                c.answer(stream, {"status": 200})
            else:
                check(False, f"unknown push: {head}")
            seen.add(kind)
        # Let the answers reach the gateway before closing.
        await asyncio.sleep(0.5)
    print("DONE", flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]))
