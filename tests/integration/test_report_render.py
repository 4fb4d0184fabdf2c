"""The governance report renders in headless Chromium, without errors and not blank.

Chromium is Debian's ``chromium`` package, installed by ``infra/chromium.sh`` (called
here, idempotent). Outside CI a machine without it (and without root to install it)
skips; in CI (``CI=true``) that is a failure.

The screenshot is read with the small PNG decoder below (zlib + the five PNG row
filters), so the check needs no imaging library: a rendered report has thousands of
distinct colours and most of its area is not background white.
"""

from __future__ import annotations

import os
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.cli.demo import build_report_for
from streams.paths import REPO_ROOT
from streams.replay.demo import DemoOptions, run_demo

CHROMIUM_SH = REPO_ROOT / "infra" / "chromium.sh"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


# --- a minimal PNG reader (8-bit greyscale, RGB, RGBA; non-interlaced) ------------------


def read_png(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """Returns ``(width, height, channels, rows)`` of an 8-bit non-interlaced PNG.

    Raises:
        ValueError: not a PNG, or a kind this reader does not decode.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat = 8, []
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or interlace:
                raise ValueError(f"unsupported PNG: depth {depth}, interlace {interlace}")
            channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour, 0)
            if not channels:
                raise ValueError(f"unsupported PNG colour type {colour}")
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        line = bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(raw[start], line, previous, channels)
        rows.append(bytes(line))
        previous = line
    return width, height, channels, rows


def _unfilter(kind: int, line: bytearray, prev: bytearray, bpp: int) -> None:
    if kind == 0:
        return
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up = prev[i]
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + up) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
        elif kind == 4:
            corner = prev[i - bpp] if i >= bpp else 0
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
            line[i] = (line[i] + pred) & 0xFF
        else:
            raise ValueError(f"unknown PNG filter {kind}")


def pixels(rows: list[bytes], channels: int) -> Iterator[tuple[int, ...]]:
    """Yields each pixel as a tuple of its (colour) channels, alpha dropped."""
    colour = 3 if channels >= 3 else 1
    for row in rows:
        for x in range(0, len(row), channels):
            yield tuple(row[x : x + colour])


def png_summary(data: bytes) -> tuple[int, int, int, float]:
    """Returns ``(width, height, distinct colours, share of non-white pixels)``."""
    width, height, channels, rows = read_png(data)
    colours: set[tuple[int, ...]] = set()
    non_white = total = 0
    for pixel in pixels(rows, channels):
        colours.add(pixel)
        total += 1
        if min(pixel) < 235:
            non_white += 1
    return width, height, len(colours), non_white / max(total, 1)


def test_png_reader_decodes_a_known_image() -> None:
    # A 2x2 RGB image, rows filtered with Sub and Up, made by hand.
    raw = bytes([1, 255, 0, 0, 1, 0, 0]) + bytes([2, 0, 0, 255, 0, 255, 0])
    ihdr = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    width, height, channels, rows = read_png(png)
    assert (width, height, channels) == (2, 2, 3)
    assert list(pixels(rows, channels)) == [(255, 0, 0), (0, 0, 0), (255, 0, 255), (0, 255, 0)]


# --- chromium -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium binary, installed by infra/chromium.sh when missing."""
    try:
        subprocess.run(["bash", str(CHROMIUM_SH), "install"], check=True, timeout=900)
        found = subprocess.run(
            ["bash", str(CHROMIUM_SH), "path"], check=True, capture_output=True, text=True
        )
        return found.stdout.strip()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        message = f"no headless Chromium (infra/chromium.sh failed: {exc})"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)


def chromium_command(binary: str, profile: Path, *args: str) -> list[str]:
    """A headless, offline, sandbox-less Chromium invocation (runs as root in CI)."""
    return [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *args,
    ]


def dump_dom(binary: str, html: Path, tmp: Path) -> tuple[str, list[str]]:
    """Returns the DOM Chromium built from ``html`` and the page's console messages."""
    done = subprocess.run(
        chromium_command(
            binary,
            tmp / "profile-dom",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            html.as_uri(),
        ),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # Page errors (script errors, blocked or missing resources) arrive as CONSOLE lines.
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


def screenshot(binary: str, html: Path, png: Path, tmp: Path, size: str = "1280,2000") -> str:
    """Renders ``html`` to ``png``; returns Chromium's stderr."""
    done = subprocess.run(
        chromium_command(
            binary, tmp / "profile", f"--screenshot={png}", f"--window-size={size}", html.as_uri()
        ),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report rendered from a small demo run (14 days, 2 sites)."""

    base = tmp_path_factory.mktemp("report")
    options = DemoOptions(
        workdir=base / "demo",
        days=14,
        sites=2,
        studies_per_day=30,
        drift_day=7,
    )
    run_demo(options)
    out = base / "report.html"
    build_report_for(options.chdb_path, out, generated_at_ms=int(time.time() * 1000))
    return out


def test_report_is_self_contained(report_html: Path) -> None:
    html = report_html.read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html
    assert html.count("<svg") >= 10


def test_report_renders_in_headless_chromium(
    chromium: str, report_html: Path, tmp_path: Path
) -> None:
    # The DOM Chromium built from the file: the page parsed and laid out.
    dom, console = dump_dom(chromium, report_html, tmp_path)
    assert "AI governance report" in dom
    assert "Scorecard per model and site" in dom
    assert console == [], console

    png = tmp_path / "report.png"
    screenshot(chromium, report_html, png, tmp_path)
    width, height, colours, non_white = png_summary(png.read_bytes())
    assert (width, height) == (1280, 2000)
    # A blank or unstyled page has a handful of colours; charts, badges and
    # antialiased text give thousands.
    assert colours > 500, f"only {colours} distinct colours: the report looks blank"
    assert non_white > 0.05, f"only {non_white:.1%} of the page is not white"


def test_console_errors_are_seen(chromium: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>notDefined()</script></body></html>")
    _, console = dump_dom(chromium, broken, tmp_path)
    assert any("Uncaught ReferenceError" in line for line in console), console


def test_blank_page_fails_the_check(chromium: str, tmp_path: Path) -> None:
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>", encoding="utf-8")
    png = tmp_path / "blank.png"
    screenshot(chromium, blank, png, tmp_path)
    _, _, colours, non_white = png_summary(png.read_bytes())
    assert colours < 50 and non_white < 0.01
