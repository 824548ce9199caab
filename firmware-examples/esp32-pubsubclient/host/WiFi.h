// Host build: WiFi is the PC's network; WiFiClient is a POSIX TCP socket.

#pragma once

#include <Arduino.h>
#include <cerrno>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define WIFI_STA 1
#define WL_CONNECTED 3

struct HostWiFi {
  void mode(int) {}
  void begin(const char*, const char*) {}
  int status() { return WL_CONNECTED; }
};
inline HostWiFi WiFi;

class WiFiClient : public Client {
 public:
  ~WiFiClient() override { stop(); }

  int connect(const char* host, uint16_t port) override {
    stop();
    char service[8];
    std::snprintf(service, sizeof service, "%u", port);
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    if (getaddrinfo(host, service, &hints, &found) != 0) return 0;
    for (addrinfo* a = found; a; a = a->ai_next) {
      int s = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
      if (s < 0) continue;
      if (::connect(s, a->ai_addr, a->ai_addrlen) == 0) {
        fd_ = s;
        break;
      }
      close(s);
    }
    freeaddrinfo(found);
    if (fd_ < 0) return 0;
    int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    timeval tv{15, 0};  // PubSubClient's MQTT_SOCKET_TIMEOUT
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return 1;
  }

  size_t write(const uint8_t* buf, size_t size) override {
    size_t done = 0;
    while (fd_ >= 0 && done < size) {
      ssize_t n = send(fd_, buf + done, size - done, MSG_NOSIGNAL);
      if (n <= 0) {
        stop();
        break;
      }
      done += (size_t)n;
    }
    return done;
  }

  int available() override {
    int n = 0;
    if (fd_ < 0 || ioctl(fd_, FIONREAD, &n) != 0) return 0;
    return n;
  }

  int read() override {
    uint8_t c;
    if (fd_ < 0) return -1;
    ssize_t n = recv(fd_, &c, 1, 0);
    if (n <= 0) {
      if (n == 0) stop();
      return -1;
    }
    return c;
  }

  uint8_t connected() override {
    if (fd_ < 0) return 0;
    char c;
    ssize_t n = recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
      stop();
      return 0;
    }
    return 1;
  }

  void stop() override {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};
