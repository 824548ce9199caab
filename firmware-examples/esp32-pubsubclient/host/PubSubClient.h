// Host build: a small MQTT 3.1.1 client with PubSubClient's API and the limits the sketch must
// live with, written for this repository (it is not knolleary's PubSubClient):
// - publish() is QoS 0 only, and refuses a packet larger than the buffer (default 256 bytes);
// - one buffer for incoming and outgoing packets: the callback's topic and payload point into it,
//   and a publish from the callback overwrites them;
// - incoming messages larger than the buffer are dropped without a word;
// - subscribe() sends SUBSCRIBE and does not wait for the SUBACK; QoS 1 messages are PUBACKed
//   after the callback returns;
// - loop() handles at most one incoming packet per call and sends PINGREQ on the keep-alive.

#pragma once

#include <Arduino.h>

#define MQTT_CONNECTION_TIMEOUT -4
#define MQTT_CONNECTION_LOST -3
#define MQTT_CONNECT_FAILED -2
#define MQTT_DISCONNECTED -1
#define MQTT_CONNECTED 0

class PubSubClient {
 public:
  typedef void (*Callback)(char*, uint8_t*, unsigned int);

  explicit PubSubClient(Client& client) : client_(&client) { setBufferSize(256); }
  ~PubSubClient() { std::free(buf_); }

  PubSubClient& setServer(const char* host, uint16_t port) {
    host_ = host;
    port_ = port;
    return *this;
  }
  PubSubClient& setCallback(Callback cb) {
    cb_ = cb;
    return *this;
  }
  PubSubClient& setKeepAlive(uint16_t seconds) {
    keepAlive_ = seconds;
    return *this;
  }
  boolean setBufferSize(uint16_t size) {
    if (size == 0) return false;
    uint8_t* b = (uint8_t*)std::realloc(buf_, size);
    if (!b) return false;
    buf_ = b;
    size_ = size;
    return true;
  }

  boolean connect(const char* id) { return connect(id, nullptr, nullptr); }

  boolean connect(const char* id, const char* user, const char* pass) {
    if (connected()) return true;
    if (!client_->connect(host_, port_)) {
      state_ = MQTT_CONNECT_FAILED;
      return false;
    }
    size_t n = 0;
    const uint8_t header[] = {0, 4, 'M', 'Q', 'T', 'T', 4};
    std::memcpy(buf_ + 5, header, sizeof header);
    n = 5 + sizeof header;
    uint8_t flags = 0x02;  // clean session
    if (user) flags |= 0x80;
    if (user && pass) flags |= 0x40;
    buf_[n++] = flags;
    buf_[n++] = (uint8_t)(keepAlive_ >> 8);
    buf_[n++] = (uint8_t)keepAlive_;
    if (!putString(id, &n) || (user && !putString(user, &n)) || (user && pass && !putString(pass, &n))) {
      state_ = MQTT_CONNECT_FAILED;
      client_->stop();
      return false;
    }
    if (!send(0x10, n)) {
      state_ = MQTT_CONNECTION_LOST;
      return false;
    }
    uint8_t type = 0;
    size_t len = 0;
    if (!readPacket(&type, &len) || (type & 0xF0) != 0x20 || len < 2) {
      state_ = MQTT_CONNECTION_TIMEOUT;
      client_->stop();
      return false;
    }
    if (buf_[1] != 0) {
      state_ = buf_[1];
      client_->stop();
      return false;
    }
    state_ = MQTT_CONNECTED;
    lastIn_ = lastOut_ = millis();
    pingOutstanding_ = false;
    return true;
  }

  boolean connected() {
    if (state_ == MQTT_CONNECTED && !client_->connected()) state_ = MQTT_CONNECTION_LOST;
    return state_ == MQTT_CONNECTED;
  }

  int state() { return state_; }

  boolean publish(const char* topic, const char* payload) {
    return publish(topic, (const uint8_t*)payload, (unsigned int)std::strlen(payload), false);
  }

  boolean publish(const char* topic, const uint8_t* payload, unsigned int len, boolean retained) {
    if (!connected()) return false;
    if (size_ < 5 + 2 + std::strlen(topic) + len) return false;
    size_t n = 5;
    if (!putString(topic, &n)) return false;
    std::memmove(buf_ + n, payload, len);
    n += len;
    return send(0x30 | (retained ? 1 : 0), n);
  }

  boolean subscribe(const char* topic, uint8_t qos) {
    if (!connected() || qos > 1) return false;
    size_t n = 5;
    nextId_ = (uint16_t)(nextId_ + 1 == 0 ? 1 : nextId_ + 1);
    buf_[n++] = (uint8_t)(nextId_ >> 8);
    buf_[n++] = (uint8_t)nextId_;
    if (!putString(topic, &n) || n + 1 > size_) return false;
    buf_[n++] = qos;
    return send(0x82, n);
  }

  boolean loop() {
    if (!connected()) return false;
    unsigned long now = millis();
    unsigned long ka = keepAlive_ * 1000UL;
    if (ka && (now - lastIn_ > ka || now - lastOut_ > ka)) {
      if (pingOutstanding_) {
        state_ = MQTT_CONNECTION_TIMEOUT;
        client_->stop();
        return false;
      }
      buf_[0] = 0xC0;
      buf_[1] = 0;
      client_->write(buf_, 2);
      lastOut_ = lastIn_ = now;
      pingOutstanding_ = true;
    }
    if (!client_->available()) return true;
    uint8_t type = 0;
    size_t len = 0;
    if (!readPacket(&type, &len)) return connected();
    lastIn_ = millis();
    switch (type & 0xF0) {
      case 0x30: {  // PUBLISH: [topic len][topic][packet id if QoS 1][payload]
        if (len < 2) break;
        uint8_t qos = (type >> 1) & 3;
        size_t tlen = ((size_t)buf_[0] << 8) | buf_[1];
        size_t at = 2 + tlen + (qos ? 2 : 0);
        if (at > len) break;
        uint16_t id = qos ? (uint16_t)((buf_[2 + tlen] << 8) | buf_[3 + tlen]) : 0;
        // Topic and payload stay in the buffer; the topic is NUL-terminated in place.
        std::memmove(buf_, buf_ + 2, tlen);
        buf_[tlen] = 0;
        if (cb_) cb_((char*)buf_, buf_ + at, (unsigned int)(len - at));
        if (qos == 1) {
          uint8_t ack[4] = {0x40, 2, (uint8_t)(id >> 8), (uint8_t)id};
          client_->write(ack, 4);
          lastOut_ = millis();
        }
        break;
      }
      case 0xD0:  // PINGRESP
        pingOutstanding_ = false;
        break;
      case 0xC0: {  // PINGREQ from the server: answer
        uint8_t resp[2] = {0xD0, 0};
        client_->write(resp, 2);
        break;
      }
      default:  // SUBACK, ...: nothing to do
        break;
    }
    return true;
  }

  void disconnect() {
    uint8_t d[2] = {0xE0, 0};
    client_->write(d, 2);
    client_->stop();
    state_ = MQTT_DISCONNECTED;
  }

 private:
  // Writes a length-prefixed string at buf_[*n].
  bool putString(const char* s, size_t* n) {
    size_t len = std::strlen(s);
    if (*n + 2 + len > size_ || len > 0xFFFF) return false;
    buf_[(*n)++] = (uint8_t)(len >> 8);
    buf_[(*n)++] = (uint8_t)len;
    std::memcpy(buf_ + *n, s, len);
    *n += len;
    return true;
  }

  // Sends buf_[5..n) with a fixed header of type `first`, written just before it.
  bool send(uint8_t first, size_t n) {
    size_t body = n - 5;
    uint8_t hdr[5];
    size_t h = 0;
    hdr[h++] = first;
    do {
      uint8_t b = body % 128;
      body /= 128;
      if (body) b |= 0x80;
      hdr[h++] = b;
    } while (body && h < 5);
    size_t start = 5 - h;
    std::memcpy(buf_ + start, hdr, h);
    size_t total = n - start;
    bool ok = client_->write(buf_ + start, total) == total;
    if (ok) lastOut_ = millis();
    return ok;
  }

  // Reads one packet; its body goes to buf_[0..len). A body larger than the buffer is read and
  // dropped (returns false), as PubSubClient drops it.
  bool readPacket(uint8_t* type, size_t* len) {
    int t = client_->read();
    if (t < 0) return false;
    *type = (uint8_t)t;
    size_t length = 0, mult = 1;
    for (int i = 0; i < 4; i++) {
      int b = client_->read();
      if (b < 0) return false;
      length += (size_t)(b & 0x7F) * mult;
      mult *= 128;
      if (!(b & 0x80)) break;
    }
    bool fits = length <= size_;
    for (size_t i = 0; i < length; i++) {
      int b = client_->read();
      if (b < 0) return false;
      if (fits) buf_[i] = (uint8_t)b;
    }
    *len = length;
    return fits;
  }

  Client* client_;
  const char* host_ = nullptr;
  uint16_t port_ = 1883;
  Callback cb_ = nullptr;
  uint16_t keepAlive_ = 15;
  uint8_t* buf_ = nullptr;
  uint16_t size_ = 0;
  int state_ = MQTT_DISCONNECTED;
  uint16_t nextId_ = 0;
  unsigned long lastIn_ = 0;
  unsigned long lastOut_ = 0;
  bool pingOutstanding_ = false;
};
