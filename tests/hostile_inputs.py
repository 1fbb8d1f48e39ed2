"""Hostile inputs shared by the hardening tests and scripts/hardening_report.py: non-public
addresses in every spelling, a loopback listener that records connections, a
decompression-bomb PNG, and a measurement of the memory one image load takes."""

from __future__ import annotations

import gc
import io
import json
import socket
import struct
import subprocess
import sys
import threading
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

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


# Most memory refusing the 100 MP bomb may take: a sixth of its decoded RGB array (286 MiB)
# and half of even a one-byte-per-pixel decode (95 MiB), so any decode of it goes over.
BOMB_MEMORY_LIMIT_BYTES = 50 * 2**20


@dataclass(frozen=True)
class LoadMemory:
    """One image load in a fresh process: what it raised and the memory it took."""

    error: str | None  # the ImageTooLarge message; None when the image loaded
    peak_growth_bytes: int  # peak resident memory during the load minus that just before it
    # False when the kernel would not reset the peak: the figure then also counts start-up,
    # an overestimate (never an underestimate) of the load's own.
    peak_reset: bool


def measure_local_load(image: Path, cache_dir: Path, max_pixels: int = 40_000_000,
                       timeout_s: float = 120) -> LoadMemory:
    """Load ``image`` through ImageLoader as a Label Studio local-files URL (its directory the
    document root) in a fresh Python process, and measure that load's peak memory.

    A fresh process, because in this one nothing sees the load reliably: ru_maxrss is the
    lifetime peak, which an earlier, bigger step pins so that it never grows again, and
    tracemalloc sees Python's allocator only, not the buffers Pillow decodes into. Linux only
    (reads /proc/self/status).
    """
    done = subprocess.run(
        [sys.executable, __file__, "measure-load", str(image), str(cache_dir), str(max_pixels)],
        capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measuring the load of {image} failed:\n{done.stderr[-4000:]}")
    return LoadMemory(**json.loads(done.stdout.splitlines()[-1]))


def _resident_bytes() -> tuple[int, int]:
    """(current, peak) resident memory of this process, from /proc/self/status (kB there)."""
    fields = dict(line.split(":", 1) for line in
                  Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024)


def _reset_peak() -> bool:
    """Set this process's peak resident memory to the current one (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not permitted in some sandboxes; the caller reports it
        return False
    return True


def _measure_load_here(image: Path, cache_dir: Path, max_pixels: int) -> LoadMemory:
    """The child's side of measure_local_load."""
    # This checkout's ml_backend, not whichever one the interpreter has installed.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from PIL import Image

    from ml_backend.core.errors import ImageTooLarge
    from ml_backend.core.images import ImageLoader, decode_image
    from ml_backend.core.settings import Settings

    loader = ImageLoader(Settings(cache_dir=cache_dir, local_files_document_root=image.parent,
                                  max_image_pixels=max_pixels))
    # Decode a tiny PNG first, so that the modules and buffers first use brings (Pillow's PNG
    # plugin, numpy's conversions) are not counted as the load's.
    tiny = io.BytesIO()
    Image.new("RGB", (4, 4)).save(tiny, "PNG")
    decode_image(tiny.getvalue(), max_pixels)
    gc.collect()
    peak_reset = _reset_peak()
    before, _ = _resident_bytes()
    try:
        loader.load(f"/data/local-files/?d={quote(image.name)}")
        error = None
    except ImageTooLarge as exc:
        error = str(exc)
    _, peak = _resident_bytes()
    return LoadMemory(error, peak - before, peak_reset)


def _main(argv: list[str]) -> None:
    if len(argv) != 4 or argv[0] != "measure-load":
        raise SystemExit(f"usage: {Path(__file__).name} measure-load IMAGE CACHE_DIR MAX_PIXELS")
    measured: dict[str, Any] = asdict(
        _measure_load_here(Path(argv[1]), Path(argv[2]), int(argv[3])))
    print(json.dumps(measured))


if __name__ == "__main__":
    _main(sys.argv[1:])
