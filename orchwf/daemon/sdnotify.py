"""systemd's notify protocol: one datagram per message to $NOTIFY_SOCKET.

The unit is Type=notify with NotifyAccess=main, so only the supervisor (the main
PID) sends: READY=1 once the workers are forked, STOPPING=1 when it drains, STATUS=
lines, and WATCHDOG=1 at half of WatchdogSec while its loop turns. Without
$NOTIFY_SOCKET (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time


def watchdog_interval(environ: dict[str, str] | os._Environ[str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when the
    watchdog is off or meant for another process (WATCHDOG_PID, as sd_watchdog_enabled)."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    target = env.get("WATCHDOG_PID", "")
    if target and target != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 2e6


class SystemdNotifier:
    """Sends READY/STOPPING/STATUS lines, and WATCHDOG=1 at half of WatchdogSec."""

    def __init__(self) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET") or None
        self.watchdog_interval = watchdog_interval()
        self.next_watchdog = 0.0
        self.sock: socket.socket | None = None
        if self.address:
            if self.address.startswith("@"):  # an abstract socket
                self.address = "\0" + self.address[1:]
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def notify(self, *lines: str) -> None:
        if self.sock is None or self.address is None:
            return
        lines = tuple(line for line in lines if line != "WATCHDOG=1" or self._watchdog_due())
        if not lines:
            return
        try:
            self.sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            pass  # systemd gone or its queue full: never fatal

    def _watchdog_due(self) -> bool:
        if self.watchdog_interval is None:
            return False
        now = time.monotonic()
        if now < self.next_watchdog:
            return False
        self.next_watchdog = now + self.watchdog_interval
        return True
