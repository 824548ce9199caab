# Settings of main.py: edit, then copy both files to the board (see README.md).
# Keep real passwords out of git.

WIFI_SSID = "my-network"
WIFI_PASSWORD = "my-wifi-password"

# The edgecar gateway: its LAN address and MQTT port (mqtt.port; mqtt.address must not be
# 127.0.0.1 for devices on the network).
EDGECAR_HOST = "192.168.1.10"
EDGECAR_PORT = 1883

# The device: `edgecar device add sensor-mpy` prints the password once.
DEVICE_ID = "sensor-mpy"
DEVICE_PASSWORD = "paste-the-password-here"

# Milliseconds between readings, until an app sets another with the set-interval command.
READ_INTERVAL_MS = 60000

# MQTT over TLS (mqtt.tls on the gateway, usually port 8883; MicroPython 1.23 or later): the CA
# file of the gateway's certificate, copied to the board. With DEVICE_CERT/DEVICE_KEY (a client
# certificate whose subject CN is DEVICE_ID, mqtt.tls.clientCaFile) no password is needed.
USE_TLS = False
GATEWAY_CA = "gateway-ca.der"
DEVICE_CERT = None  # e.g. "sensor-mpy.crt.der"
DEVICE_KEY = None  # e.g. "sensor-mpy.key.der"
