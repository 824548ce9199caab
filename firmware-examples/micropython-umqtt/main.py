# edgecar sensor for MicroPython (ESP32, Raspberry Pi Pico W, ...) with umqtt.simple, written
# from docs/device-protocol.md:
# - sends a reading as telemetry (edgecar/v1/<id>/telemetry/climate, QoS 1: the PUBACK comes once
#   the gateway has stored it) every interval;
# - keeps its last reading and its interval in its own state (state.save / state.get, keys
#   "last" and "config"), so a reboot resumes and apps can read both;
# - answers commands from apps (POST /v1.0/invoke/<id>/method/<m>): ping, read-now, set-interval.
#
# umqtt.simple is not reentrant: the message callback only records what arrived, and the main
# loop acts on it. Requests are published at QoS 0 and wait for their one reply on res/...
# Settings are in config.py.

import json
import random
import time

import network
from umqtt.simple import MQTTClient, MQTTException

import config

TREE = "edgecar/v1/%s/" % config.DEVICE_ID
MIN_INTERVAL_MS = 100
MAX_INTERVAL_MS = 86400000
MAX_STEP = 0.5

reading = {"seq": 0, "temperature": 21.5, "humidity": 45.0}
interval_ms = config.READ_INTERVAL_MS
replies = {}  # request id -> (status, payload), filled by on_message
commands = []  # (method, request id, payload) waiting for the main loop
next_rid = 1


def on_message(topic, msg):
    topic = topic.decode()
    if not topic.startswith(TREE):
        return
    rest = topic[len(TREE):]
    if rest.startswith("res/"):
        # res/<op>/<rid>/<status>[?etag=...]
        parts = rest[4:].split("/")
        if len(parts) != 3:
            return
        op, rid, status = parts
        status = int(status.split("?")[0])
        if status >= 400:
            print("request", op, rid, "failed:", status, msg)
        replies[rid] = (status, msg)
    elif rest.startswith("cmd/"):
        # cmd/<method...>/<rid>
        rest = rest[4:]
        i = rest.rfind("/")
        if i > 0 and i < len(rest) - 1:
            commands.append((rest[:i], rest[i + 1:], msg))


def request(client, op, query="", body="", timeout_ms=10000):
    """Publishes req/<op>/<rid>[?query] and waits for its reply: (status, payload)."""
    global next_rid
    rid = str(next_rid)
    next_rid += 1
    topic = TREE + "req/" + op + "/" + rid + ("?" + query if query else "")
    client.publish(topic, body)
    start = time.ticks_ms()
    while rid not in replies:
        if time.ticks_diff(time.ticks_ms(), start) > timeout_ms:
            raise OSError("no reply to %s within %d ms" % (op, timeout_ms))
        client.check_msg()
        time.sleep_ms(5)
    return replies.pop(rid)


def noise():
    return (random.getrandbits(8) - 127.5) / 127.5


def step(value, pull_to, scale):
    d = scale * noise() + 0.02 * (pull_to - value)
    return round(value + max(-MAX_STEP, min(MAX_STEP, d)), 2)


def take_reading(client):
    """Reads the sensor, sends the reading as telemetry, keeps it as the "last" state."""
    # Replace with your sensor (DHT22, BME280, ...). Simulated: a drift around 22 C, 45 %RH.
    reading["temperature"] = step(reading["temperature"], 22.0, 0.3)
    reading["humidity"] = step(reading["humidity"], 45.0, 0.4)
    reading["seq"] += 1
    text = json.dumps(reading)
    client.publish(TREE + "telemetry/climate", text, qos=1)
    status, _ = request(client, "state.save", body='[{"key":"last","value":%s}]' % text)
    print("reading", text)
    return dict(reading)


def answer(client, rid, status, body):
    client.publish(TREE + "cmdres/%s/%d" % (rid, status), json.dumps(body))
    print("command", rid, "answered", status)


def error(code, message):
    return {"errorCode": code, "message": message}


def handle(client, method, rid, body):
    global interval_ms
    if method == "ping":
        answer(client, rid, 200, {"pong": True, "device": config.DEVICE_ID,
                                  "seq": reading["seq"], "intervalMs": interval_ms})
    elif method == "read-now":
        answer(client, rid, 200, take_reading(client))
    elif method == "set-interval":
        try:
            ms = json.loads(body)["intervalMs"]
            valid = isinstance(ms, int) and MIN_INTERVAL_MS <= ms <= MAX_INTERVAL_MS
        except (ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            answer(client, rid, 400, error("ERR_BAD_REQUEST",
                                           "set-interval takes intervalMs between 100 and 86400000"))
            return
        value = json.dumps([{"key": "config", "value": {"intervalMs": ms}}])
        status, _ = request(client, "state.save", body=value)
        if status == 204:
            interval_ms = ms
            answer(client, rid, 200, {"intervalMs": ms})
        else:
            answer(client, rid, 500, error("ERR_STATE_SAVE", "the new interval could not be saved"))
    else:
        answer(client, rid, 404, error("ERR_UNKNOWN_METHOD", "unknown method %s; methods: "
                                       "ping, read-now, set-interval" % method))


def restore(client):
    """What an earlier run (or an app) saved: the interval, and the last reading to resume from."""
    global interval_ms
    status, body = request(client, "state.get", "key=config")
    if status == 200:
        try:
            ms = json.loads(body)["intervalMs"]
            if MIN_INTERVAL_MS <= ms <= MAX_INTERVAL_MS:
                interval_ms = ms
                print("interval", ms, "ms (saved by an app)")
        except (ValueError, KeyError, TypeError):
            print("ignoring the saved config", body)
    status, body = request(client, "state.get", "key=last")
    if status == 200:
        try:
            last = json.loads(body)
            reading["seq"] = int(last["seq"])
            reading["temperature"] = float(last["temperature"])
            reading["humidity"] = float(last["humidity"])
            print("resuming after reading", reading["seq"])
        except (ValueError, KeyError, TypeError):
            print("ignoring the saved reading", body)


def tls_context():
    if not getattr(config, "USE_TLS", False):
        return None
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=config.GATEWAY_CA)
    if config.DEVICE_CERT:
        ctx.load_cert_chain(config.DEVICE_CERT, config.DEVICE_KEY)
    return ctx


def connect():
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(config.WIFI_SSID, config.WIFI_PASSWORD)
        for _ in range(100):
            if wlan.isconnected():
                break
            time.sleep_ms(200)
        else:
            raise OSError("Wi-Fi did not connect")
    cert_login = getattr(config, "USE_TLS", False) and config.DEVICE_CERT
    client = MQTTClient(config.DEVICE_ID, config.EDGECAR_HOST, port=config.EDGECAR_PORT,
                        user=None if cert_login else config.DEVICE_ID,
                        password=None if cert_login else config.DEVICE_PASSWORD,
                        keepalive=60, ssl=tls_context())
    client.set_callback(on_message)
    client.connect()
    # Subscribe before sending requests, or their replies have nowhere to go.
    client.subscribe(TREE + "res/#", qos=1)
    client.subscribe(TREE + "cmd/#", qos=1)
    print("connected to", config.EDGECAR_HOST, "as", config.DEVICE_ID)
    return client


def run(client):
    last_reading = None
    last_sent = time.ticks_ms()
    while True:
        client.check_msg()
        while commands:
            handle(client, *commands.pop(0))
            last_sent = time.ticks_ms()
        now = time.ticks_ms()
        if last_reading is None or time.ticks_diff(now, last_reading) >= interval_ms:
            last_reading = now
            take_reading(client)
            last_sent = now
        elif time.ticks_diff(now, last_sent) > 30000:
            client.ping()  # keep-alive 60 s: say something at least every 30 s
            last_sent = now
        time.sleep_ms(20)


def main():
    while True:
        client = None
        try:
            client = connect()
            restore(client)
            run(client)
        except MQTTException as e:
            # 5: not authorized (unknown device or wrong password)
            print("refused by edgecar:", e)
        except OSError as e:
            print("connection lost:", e)
        if client is not None:
            try:
                client.disconnect()
            except OSError:
                pass
        replies.clear()
        print("reconnecting in 5 s")
        time.sleep(5)


main()
