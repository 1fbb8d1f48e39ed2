"""Hostile inputs shared by the hardening tests and scripts/hardening_report.py: non-public
addresses in every spelling, a loopback listener that records connections, and a
decompression-bomb PNG."""

from __future__ import annotations

import socket
import struct
import threading
import zlib
from pathlib import Path

REFUSED_HOSTS = [
    "127.0.0.1", "127.1", "2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f000001",
    "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:169.254.169.254]",
    "169.254.169.254", "169.254.170.2", "[fe80::1]", "[fd00:ec2::254]",
    "10.0.0.1", "172.16.5.4", "192.168.1.1", "[fc00::1]", "100.64.0.1",
    "0.0.0.0", "[::]", "224.0.0.1", "240.0.0.1", "255.255.255.255", "[2002:7f00:1::]",
]
REFUSED_SCHEMES = ["file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO",
                   "ftp://example.com/x.png", "dict://127.0.0.1:11211/stats",
                   "http:///nohost.png"]


class Listener:
    """A TCP listener on 127.0.0.1 that records every connection it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def write_huge_png(path: Path, width: int, height: int) -> None:
    """A valid 1-bit grayscale PNG of width x height, written without allocating its pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    idat = b"".join(comp.compress(row * 100) for _ in range(height // 100)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
