"""Host run of main.py: a small MQTT 3.1.1 client with umqtt.simple's API, for CPython on a PC.

Written for this repository from the MQTT 3.1.1 specification and umqtt.simple's documented
interface; it is not micropython-lib's umqtt.simple. It behaves as that module does where main.py
depends on it: connect() raises MQTTException(<CONNACK code>) when refused; subscribe() waits for
the SUBACK and raises on a refusal; publish(qos=1) waits for the PUBACK, handing any message
that arrives meanwhile to the callback; wait_msg() handles one packet (PUBACKs QoS 1 messages
after the callback); check_msg() does the same without blocking; the callback gets (topic,
payload) as bytes.
"""

import socket
import struct


class MQTTException(Exception):
    pass


def _string(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("!H", len(s)) + s


def _remaining_length(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0,
                 ssl=None, ssl_params=None):
        if ssl:
            raise MQTTException("host run: TLS is not available; set USE_TLS = False")
        self.client_id = client_id
        self.server = server
        self.port = port or 1883
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.sock = None
        self.cb = None
        self.pid = 0
        self.lw = None

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.lw = (topic, msg, retain, qos)

    def _send(self, first, body):
        self.sock.sendall(bytes([first]) + _remaining_length(len(body)) + body)

    def _read_exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise OSError("connection closed by the server")
            data += chunk
        return data

    def _read_packet(self):
        first = self._read_exact(1)[0]
        length, mult = 0, 1
        for _ in range(4):
            b = self._read_exact(1)[0]
            length += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        return first, self._read_exact(length)

    def connect(self, clean_session=True):
        self.sock = socket.create_connection((self.server, self.port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flags = 0x02 if clean_session else 0
        payload = _string(self.client_id)
        if self.lw:
            topic, msg, retain, qos = self.lw
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            payload += _string(topic) + _string(msg)
        if self.user is not None:
            flags |= 0x80
            payload += _string(self.user)
            if self.pswd is not None:
                flags |= 0x40
                payload += _string(self.pswd)
        self._send(0x10, _string("MQTT") + bytes([4, flags]) + struct.pack("!H", self.keepalive)
                   + payload)
        first, body = self._read_packet()
        if first != 0x20 or len(body) != 2:
            raise MQTTException("expected CONNACK")
        if body[1] != 0:
            raise MQTTException(body[1])
        return body[0] & 1

    def disconnect(self):
        try:
            self._send(0xE0, b"")
        finally:
            self.sock.close()

    def ping(self):
        self._send(0xC0, b"")

    def _next_pid(self):
        self.pid = self.pid % 65535 + 1
        return self.pid

    def publish(self, topic, msg, retain=False, qos=0):
        if isinstance(msg, str):
            msg = msg.encode()
        body = _string(topic)
        pid = 0
        if qos:
            pid = self._next_pid()
            body += struct.pack("!H", pid)
        self._send(0x30 | (qos << 1) | (1 if retain else 0), body + msg)
        if qos == 1:
            while True:
                op = self.wait_msg()
                if op == 0x40 and self._last_ack == pid:
                    return
        elif qos == 2:
            raise MQTTException("QoS 2 is not supported")

    def subscribe(self, topic, qos=0):
        pid = self._next_pid()
        self._send(0x82, struct.pack("!H", pid) + _string(topic) + bytes([qos]))
        while True:
            op = self.wait_msg()
            if op == 0x90 and self._last_ack == pid:
                if self._last_codes[0] == 0x80:
                    raise MQTTException("subscription refused: %s" % topic)
                return

    def wait_msg(self):
        """Handles one incoming packet; returns its type, or None when nothing is there (only
        after check_msg made the socket non-blocking)."""
        try:
            first, body = self._read_packet()
        except BlockingIOError:
            return None
        op = first & 0xF0
        self._last_ack = None
        if op in (0x40, 0x90):
            self._last_ack = struct.unpack("!H", body[:2])[0]
            self._last_codes = body[2:]
        elif op == 0x30:
            qos = (first >> 1) & 3
            tlen = struct.unpack("!H", body[:2])[0]
            topic = body[2:2 + tlen]
            at = 2 + tlen
            pid = None
            if qos:
                pid = struct.unpack("!H", body[at:at + 2])[0]
                at += 2
            if self.cb:
                self.cb(topic, body[at:])
            if qos == 1:
                self._send(0x40, struct.pack("!H", pid))
        return op

    def check_msg(self):
        # Peek without blocking; once a packet has started, read it whole (blocking).
        self.sock.setblocking(False)
        try:
            ready = self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return None
        finally:
            self.sock.settimeout(30)
        if not ready:
            raise OSError("connection closed by the server")
        return self.wait_msg()
