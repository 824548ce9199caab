// edgecar_sensor: an ESP32 climate sensor that is an edgecar device, written from
// docs/device-protocol.md with PubSubClient (MQTT 3.1.1) and no JSON library.
//
// - sends a reading as telemetry (edgecar/v1/<id>/telemetry/climate) every interval;
// - keeps its last reading and its interval in its own state (state.save / state.get, keys
//   "last" and "config"), so a reboot resumes and apps can read both;
// - answers commands from apps (POST /v1.0/invoke/<id>/method/<m>): ping, read-now, set-interval.
//
// PubSubClient limits, and how the protocol copes with them:
// - QoS 0 publishes only: requests and telemetry get no PUBACK. Every request still gets exactly
//   one reply on res/..., which is the device's confirmation (state.save answers 204).
// - One buffer (256 bytes by default) for the whole packet, topic included, in and out: messages
//   that do not fit are dropped silently. setBufferSize(1024) below; replies carry a topic of
//   about 60 bytes plus their JSON body.
// - The callback's topic and payload point into that buffer and the next publish overwrites it:
//   onMessage copies them before publishing anything.
// - Subscriptions are QoS 1 at most, which is what edgecar grants.
//
// Settings are in config.h.

#include "config.h"

#include <WiFi.h>
#if USE_TLS
#include <WiFiClientSecure.h>
WiFiClientSecure net;
#else
WiFiClient net;
#endif
#include <PubSubClient.h>

PubSubClient mqtt(net);

// The device's topic tree; everything it sends or receives is under it.
#define TREE "edgecar/v1/" DEVICE_ID "/"
static const size_t TREE_LEN = sizeof(TREE) - 1;
static const unsigned long MIN_INTERVAL_MS = 100;
static const unsigned long MAX_INTERVAL_MS = 86400000UL;

static unsigned long intervalMs = READ_INTERVAL_MS;
static unsigned long lastReadingAt = 0;
static bool readingTaken = false;
static unsigned long seq = 0;
static float temperature = 21.5f;
static float humidity = 45.0f;

static unsigned long nextRid = 1;
static char topic[192];
static char body[256];

// Requests whose replies the sketch waits for (0: none).
static unsigned long configRid = 0;  // state.get config, at connect
static unsigned long lastRid = 0;    // state.get last, at connect
static unsigned long askedAt = 0;
static unsigned long saveRid = 0;    // state.save config, for a set-interval command
static char saveCmdRid[65];          // ... whose answer waits for that reply
static unsigned long saveInterval = 0;

// Reads the number after "name": in a flat JSON object (enough for the messages used here).
static bool jsonNumber(const char* json, const char* name, double* out) {
  char key[40];
  snprintf(key, sizeof key, "\"%s\"", name);
  const char* p = strstr(json, key);
  if (!p) return false;
  p += strlen(key);
  while (*p == ' ') p++;
  if (*p != ':') return false;
  p++;
  char* end;
  double v = strtod(p, &end);
  if (end == p) return false;
  *out = v;
  return true;
}

// Publishes a request edgecar/v1/<id>/req/<op>/<rid>[?query]; returns its request id.
static unsigned long request(const char* op, const char* query, const char* payload) {
  unsigned long rid = nextRid++;
  snprintf(topic, sizeof topic, TREE "req/%s/%lu%s%s", op, rid, query[0] ? "?" : "", query);
  if (!mqtt.publish(topic, payload)) {
    Serial.printf("request %s not sent (larger than the MQTT buffer?)\n", op);
  }
  return rid;
}

static void answer(const char* rid, int status, const char* json) {
  snprintf(topic, sizeof topic, TREE "cmdres/%s/%d", rid, status);
  mqtt.publish(topic, json);
  Serial.printf("command %s answered %d\n", rid, status);
}

static int readingJson(char* out, size_t n) {
  return snprintf(out, n, "{\"seq\":%lu,\"temperature\":%.2f,\"humidity\":%.2f}", seq, temperature,
                  humidity);
}

// Takes a reading, sends it as telemetry and keeps it as the "last" state.
static void sendReading() {
  // Replace with your sensor (DHT22, BME280, SHT31, ...). Simulated: a drift around 22 °C, 45 %RH.
  temperature += random(-30, 31) / 100.0f + 0.02f * (22.0f - temperature);
  humidity += random(-40, 41) / 100.0f + 0.02f * (45.0f - humidity);
  seq++;
  lastReadingAt = millis();
  readingTaken = true;
  char reading[96];
  readingJson(reading, sizeof reading);
  mqtt.publish(TREE "telemetry/climate", reading);
  snprintf(body, sizeof body, "[{\"key\":\"last\",\"value\":%s}]", reading);
  request("state.save", "", body);
  Serial.printf("reading %s\n", reading);
}

// A reply: rest = "<op>/<rid>/<status>[?etag=...]".
static void onReply(char* rest, const char* text) {
  char* op = rest;
  char* slash = strchr(rest, '/');
  if (!slash) return;
  *slash = 0;
  char* rid = slash + 1;
  slash = strchr(rid, '/');
  if (!slash) return;
  *slash = 0;
  int status = atoi(slash + 1);  // atoi stops at '?'
  unsigned long r = strtoul(rid, nullptr, 10);
  if (status >= 400) Serial.printf("request %s/%s failed: %d %s\n", op, rid, status, text);
  double v;
  if (r != 0 && r == configRid) {
    configRid = 0;
    if (status == 200 && jsonNumber(text, "intervalMs", &v) && v >= MIN_INTERVAL_MS &&
        v <= MAX_INTERVAL_MS) {
      intervalMs = (unsigned long)v;
      Serial.printf("interval %lu ms (saved by an app)\n", intervalMs);
    }
  } else if (r != 0 && r == lastRid) {
    lastRid = 0;
    if (status == 200 && jsonNumber(text, "seq", &v)) {
      seq = (unsigned long)v;
      if (jsonNumber(text, "temperature", &v)) temperature = v;
      if (jsonNumber(text, "humidity", &v)) humidity = v;
      Serial.printf("resuming after reading %lu\n", seq);
    }
  } else if (r != 0 && r == saveRid) {
    saveRid = 0;
    if (status == 204) {
      intervalMs = saveInterval;
      lastReadingAt = millis();
      char json[40];
      snprintf(json, sizeof json, "{\"intervalMs\":%lu}", intervalMs);
      answer(saveCmdRid, 200, json);
    } else {
      answer(saveCmdRid, 500,
             "{\"errorCode\":\"ERR_STATE_SAVE\",\"message\":\"the new interval could not be saved\"}");
    }
  }
}

// A command: rest = "<method...>/<rid>".
static void onCommand(char* rest, const char* text, bool tooLarge) {
  char* slash = strrchr(rest, '/');
  if (!slash || slash == rest) return;
  *slash = 0;
  const char* method = rest;
  const char* rid = slash + 1;
  char json[160];
  double v;
  if (tooLarge) {
    answer(rid, 400, "{\"errorCode\":\"ERR_BAD_REQUEST\",\"message\":\"body too large\"}");
  } else if (strcmp(method, "ping") == 0) {
    snprintf(json, sizeof json,
             "{\"pong\":true,\"device\":\"" DEVICE_ID "\",\"seq\":%lu,\"intervalMs\":%lu}", seq,
             intervalMs);
    answer(rid, 200, json);
  } else if (strcmp(method, "read-now") == 0) {
    sendReading();
    readingJson(json, sizeof json);
    answer(rid, 200, json);
  } else if (strcmp(method, "set-interval") == 0) {
    if (!jsonNumber(text, "intervalMs", &v) || v < MIN_INTERVAL_MS || v > MAX_INTERVAL_MS) {
      answer(rid, 400,
             "{\"errorCode\":\"ERR_BAD_REQUEST\",\"message\":\"set-interval takes intervalMs "
             "between 100 and 86400000\"}");
    } else if (saveRid != 0) {
      answer(rid, 503, "{\"errorCode\":\"ERR_BUSY\",\"message\":\"another set-interval is saving\"}");
    } else {
      // Answer once edgecar has stored it: the reply to this state.save completes the command.
      saveInterval = (unsigned long)v;
      snprintf(saveCmdRid, sizeof saveCmdRid, "%s", rid);
      snprintf(body, sizeof body, "[{\"key\":\"config\",\"value\":{\"intervalMs\":%lu}}]",
               saveInterval);
      saveRid = request("state.save", "", body);
    }
  } else {
    snprintf(json, sizeof json,
             "{\"errorCode\":\"ERR_UNKNOWN_METHOD\",\"message\":\"unknown method %.40s; methods: "
             "ping, read-now, set-interval\"}",
             method);
    answer(rid, 404, json);
  }
}

static void onMessage(char* t, byte* payload, unsigned int len) {
  // t and payload live in PubSubClient's buffer, which the next publish overwrites: copy first.
  char msgTopic[160];
  char text[256];
  if (strlen(t) >= sizeof msgTopic) return;
  strcpy(msgTopic, t);
  bool tooLarge = len >= sizeof text;
  size_t n = tooLarge ? 0 : len;
  memcpy(text, payload, n);
  text[n] = 0;
  if (strncmp(msgTopic, TREE, TREE_LEN) != 0) return;
  char* rest = msgTopic + TREE_LEN;
  if (strncmp(rest, "res/", 4) == 0) {
    onReply(rest + 4, text);
  } else if (strncmp(rest, "cmd/", 4) == 0) {
    onCommand(rest + 4, text, tooLarge);
  }
}

static void connectMqtt() {
  while (!mqtt.connected()) {
    Serial.printf("connecting to %s:%d as %s\n", EDGECAR_HOST, EDGECAR_PORT, DEVICE_ID);
#if USE_TLS && defined(DEVICE_CERT_PEM)
    bool ok = mqtt.connect(DEVICE_ID);  // the client certificate is the login
#else
    bool ok = mqtt.connect(DEVICE_ID, DEVICE_ID, DEVICE_PASSWORD);  // client id, user, password
#endif
    if (!ok) {
      // state 5: not authorized (unknown device or wrong password); negative: network.
      Serial.printf("not connected (state %d); retrying in 5 s\n", mqtt.state());
      delay(5000);
      continue;
    }
    // Subscribe before sending requests, or their replies have nowhere to go.
    mqtt.subscribe(TREE "res/#", 1);
    mqtt.subscribe(TREE "cmd/#", 1);
    // What an earlier run (or an app) saved: the interval, and the last reading to resume from.
    askedAt = millis();
    configRid = request("state.get", "key=config", "");
    lastRid = request("state.get", "key=last", "");
    saveRid = 0;
    Serial.println("connected");
  }
}

void setup() {
  Serial.begin(115200);
  WiFi.mode(WIFI_STA);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  while (WiFi.status() != WL_CONNECTED) delay(250);
#if USE_TLS
  net.setCACert(GATEWAY_CA_PEM);
#ifdef DEVICE_CERT_PEM
  net.setCertificate(DEVICE_CERT_PEM);
  net.setPrivateKey(DEVICE_KEY_PEM);
#endif
#endif
  mqtt.setServer(EDGECAR_HOST, EDGECAR_PORT);
  mqtt.setBufferSize(1024);
  mqtt.setKeepAlive(60);
  mqtt.setCallback(onMessage);
}

void loop() {
  if (WiFi.status() != WL_CONNECTED) {
    delay(1000);
    return;
  }
  connectMqtt();
  mqtt.loop();
  // The first reading waits (up to 5 s) for the saved interval and last reading.
  bool restoring = (configRid != 0 || lastRid != 0) && millis() - askedAt < 5000;
  if (!restoring && (!readingTaken || millis() - lastReadingAt >= intervalMs)) {
    sendReading();
  }
  delay(10);
}
