// Host build: the TLS client's setters, so that a USE_TLS=1 sketch compiles on a PC. It does not
// speak TLS: connect() refuses, saying so. TLS runs on the ESP32 only.

#pragma once

#include <WiFi.h>

class WiFiClientSecure : public WiFiClient {
 public:
  void setCACert(const char*) {}
  void setCertificate(const char*) {}
  void setPrivateKey(const char*) {}
  int connect(const char*, uint16_t) override {
    Serial.println("host build: TLS is not available on the PC; build with USE_TLS 0");
    return 0;
  }
};
