"""Host run of main.py: the PC is already on the network, so WLAN only says it is connected."""

STA_IF = 0


class WLAN:
    def __init__(self, interface):
        self.interface = interface

    def active(self, on=None):
        return True

    def connect(self, ssid, password):
        pass

    def isconnected(self):
        return True
