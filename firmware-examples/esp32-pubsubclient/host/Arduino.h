// Host build of the sketch: the few Arduino core functions it uses, on Linux, so that the sketch
// can be compiled with g++ and run against a real edgecar on a PC. Not the Arduino core: only
// what edgecar_sensor.ino calls, with the same signatures as the ESP32 core.

#pragma once

#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <thread>

typedef uint8_t byte;
typedef bool boolean;

inline unsigned long millis() {
  static const auto start = std::chrono::steady_clock::now();
  return (unsigned long)std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now() - start)
      .count();
}

inline void delay(unsigned long ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// random(min, max): min inclusive, max exclusive, as in Arduino.
inline long random(long lo, long hi) { return hi <= lo ? lo : lo + (long)(std::rand() % (hi - lo)); }

// Serial goes to stdout, one line at a time.
struct HostSerial {
  void begin(unsigned long) {}
  int printf(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
    va_list ap;
    va_start(ap, fmt);
    int n = std::vprintf(fmt, ap);
    va_end(ap);
    std::fflush(stdout);
    return n;
  }
  size_t println(const char* s) {
    int n = std::printf("%s\n", s);
    std::fflush(stdout);
    return n < 0 ? 0 : (size_t)n;
  }
};
inline HostSerial Serial;

// The byte stream PubSubClient writes to (WiFiClient on the ESP32).
class Client {
 public:
  virtual ~Client() {}
  virtual int connect(const char* host, uint16_t port) = 0;
  virtual size_t write(const uint8_t* buf, size_t size) = 0;
  virtual int available() = 0;
  virtual int read() = 0;
  virtual uint8_t connected() = 0;
  virtual void stop() = 0;
};
