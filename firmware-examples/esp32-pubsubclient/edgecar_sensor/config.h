// Settings of the edgecar_sensor sketch: edit before flashing. Keep real passwords out of git.

#pragma once

// Wi-Fi network.
#define WIFI_SSID "my-network"
#define WIFI_PASSWORD "my-wifi-password"

// The edgecar gateway: its LAN address and MQTT port (mqtt.port; mqtt.address must not be
// 127.0.0.1 for devices on the network).
#define EDGECAR_HOST "192.168.1.10"
#define EDGECAR_PORT 1883

// The device: `edgecar device add sensor-esp32` prints the password once.
#define DEVICE_ID "sensor-esp32"
#define DEVICE_PASSWORD "paste-the-password-here"

// Milliseconds between readings, until an app sets another with the set-interval command.
#define READ_INTERVAL_MS 60000UL

// MQTT over TLS (mqtt.tls on the gateway, usually port 8883): set to 1 and paste PEM text below.
#ifndef USE_TLS
#define USE_TLS 0
#endif
#if USE_TLS
// The CA that signed the gateway's certificate (mqtt.tls.certFile).
static const char GATEWAY_CA_PEM[] = "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n";
// Optional client certificate whose subject CN is DEVICE_ID (mqtt.tls.clientCaFile): with it the
// device needs no password. Remove these two to log in with DEVICE_PASSWORD.
#define DEVICE_CERT_PEM "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"
#define DEVICE_KEY_PEM "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----\n"
#endif
