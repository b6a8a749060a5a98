"""systemd's notify protocol: one datagram per message to $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import time


class SystemdNotifier:
    """Sends READY/STOPPING/STATUS lines, and WATCHDOG=1 at half of WatchdogSec."""

    def __init__(self) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET") or None
        usec = os.environ.get("WATCHDOG_USEC")
        self.watchdog_interval = int(usec) / 2e6 if usec and usec.isdigit() else None
        self.next_watchdog = 0.0
        self.sock: socket.socket | None = None
        if self.address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            if self.address.startswith("@"):
                self.address = "\0" + self.address[1:]

    def notify(self, *lines: str) -> None:
        if self.sock is None or self.address is None:
            return
        lines = tuple(line for line in lines if line != "WATCHDOG=1" or self._watchdog_due())
        if not lines:
            return
        try:
            self.sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            pass  # systemd gone or socket full: never fatal

    def _watchdog_due(self) -> bool:
        if self.watchdog_interval is None:
            return False
        now = time.monotonic()
        if now < self.next_watchdog:
            return False
        self.next_watchdog = now + self.watchdog_interval
        return True
