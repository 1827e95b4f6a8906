"""The desktop side of the agent: capture with mss, act with pyautogui (paper §4.1.5; tasks.md §5).

Both libraries are imported here, inside functions, and only by `kvl agent`: `import pyautogui` without a
display raises KeyError('DISPLAY') at import time, and under a bare Xvfb with no ~/.Xauthority python-xlib
fails to authenticate, so the environment is checked (and XAUTHORITY pointed at an empty file, as
xvfb-run does) before either is touched.

Coordinates: the model answers in 0-1 coordinates of the screenshot it was shown, so the resize the
processor applies does not matter. They map to the captured monitor's pixels (mss works in physical
pixels), then to pyautogui's coordinate space, which is in logical points where the OS scales the desktop
(macOS Retina, Windows display scaling): the ratio is measured once, from the primary monitor.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kvl_core.errors import KvlError

from .actions import Action

NO_DISPLAY = "no X display: run under xvfb-run, or set DISPLAY (e.g. DISPLAY=:0)"


def check_display() -> None:
    """Raise a one-line KvlError when there is no display to capture, and prepare X authentication."""
    if sys.platform in ("darwin", "win32"):
        return
    if not os.environ.get("DISPLAY"):
        if os.environ.get("WAYLAND_DISPLAY"):
            raise KvlError("a Wayland session without DISPLAY: kvl agent needs X11 (XWayland: set DISPLAY)")
        raise KvlError(NO_DISPLAY)
    if not os.environ.get("XAUTHORITY") and not (Path.home() / ".Xauthority").exists():
        # python-xlib refuses to connect when there is no authority file at all; an empty one means
        # "no cookie", which an Xvfb without -auth accepts (this is what xvfb-run sets up).
        fd, path = tempfile.mkstemp(prefix="kvl-xauth-")
        os.close(fd)
        os.environ["XAUTHORITY"] = path


@dataclass(frozen=True)
class Monitor:
    index: int
    left: int
    top: int
    width: int
    height: int

    def describe(self) -> str:
        return f"{self.index}: {self.width}x{self.height} at {self.left},{self.top}"


@dataclass
class Shot:
    image: object  # PIL.Image, RGB, the monitor's physical pixels
    monitor: Monitor
    seconds: float


class Screen:
    """One monitor of the display, captured with mss (1 = the first monitor, 0 = all of them together)."""

    def __init__(self, monitor: int = 1):
        check_display()
        try:
            import mss
        except ImportError:
            raise KvlError("kvl agent needs mss: pip install 'kvl[agent]'") from None
        factory = getattr(mss, "MSS", None) or mss.mss  # mss 10.2 deprecates mss.mss()
        try:
            self._mss = factory()
            monitors = self._mss.monitors
        except Exception as e:  # noqa: BLE001 -- mss raises its own ScreenShotError / XError types
            raise KvlError(f"cannot open the display {os.environ.get('DISPLAY', '')!r}: {_first_line(e)}; "
                           f"{NO_DISPLAY}") from None
        self.monitors = [Monitor(i, m["left"], m["top"], m["width"], m["height"]) for i, m in enumerate(monitors)]
        if not 0 <= monitor < len(self.monitors):
            have = "; ".join(m.describe() for m in self.monitors[1:]) or "none"
            raise KvlError(f"--monitor {monitor}: no such monitor (this display has {len(self.monitors) - 1}: "
                           f"{have}; 0 means all of them)")
        self.monitor = self.monitors[monitor]

    def capture(self) -> Shot:
        from PIL import Image

        t = time.perf_counter()
        m = self.monitor
        try:
            raw = self._mss.grab({"left": m.left, "top": m.top, "width": m.width, "height": m.height})
        except Exception as e:  # noqa: BLE001
            raise KvlError(f"screen capture failed: {_first_line(e)}") from None
        img = Image.frombytes("RGB", raw.size, raw.rgb)
        return Shot(img, m, time.perf_counter() - t)

    def to_pixels(self, x: float, y: float) -> tuple[int, int]:
        """Normalised screenshot coordinates -> physical pixels of the desktop (inside the monitor)."""
        m = self.monitor
        px = m.left + min(int(round(x * m.width)), m.width - 1)
        py = m.top + min(int(round(y * m.height)), m.height - 1)
        return px, py

    def close(self) -> None:
        try:
            self._mss.close()
        except Exception:  # noqa: BLE001 -- closing a dead connection
            pass


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def import_pyautogui():
    """pyautogui, or a one-line KvlError (it connects to the display while being imported)."""
    import contextlib
    import io

    check_display()
    try:
        # python-xlib prints authority-file warnings on stdout while connecting; stdout is for --json
        with contextlib.redirect_stdout(io.StringIO()):
            import pyautogui
    except ImportError as e:
        if "pyautogui" in str(e):
            raise KvlError("kvl agent needs pyautogui: pip install 'kvl[agent]'") from None
        raise KvlError(f"pyautogui cannot start: {_first_line(e)}") from None
    except KeyError:
        raise KvlError(NO_DISPLAY) from None
    except Exception as e:  # noqa: BLE001 -- Xlib.error.DisplayConnectionError, XauthError, ...
        raise KvlError(f"pyautogui cannot connect to the display {os.environ.get('DISPLAY', '')!r}: "
                       f"{_first_line(e)}") from None
    return pyautogui


class FailSafe(Exception):
    """The user slammed the mouse into a screen corner (pyautogui's fail-safe): stop at once."""


class Executor:
    """Performs actions with pyautogui; FAILSAFE stays on and every call is followed by a short pause."""

    def __init__(self, screen: Screen, pause: float = 0.1):
        self.pg = import_pyautogui()
        self.pg.FAILSAFE = True
        self.pg.PAUSE = max(pause, 0.1)
        self.screen = screen
        # mss counts physical pixels, pyautogui logical points: they differ under OS display scaling.
        primary = next((m for m in screen.monitors[1:] if m.left == 0 and m.top == 0), screen.monitors[-1])
        w, h = self.pg.size()
        self.scale = (primary.width / w if w else 1.0, primary.height / h if h else 1.0)

    def point(self, px: int, py: int) -> tuple[int, int]:
        return int(round(px / self.scale[0])), int(round(py / self.scale[1]))

    def execute(self, action: Action, pixels: tuple[int, int] | None) -> None:
        pg = self.pg
        at = self.point(*pixels) if pixels is not None else None
        xy = {"x": at[0], "y": at[1]} if at else {}
        try:
            if action.kind == "click":
                pg.click(**xy, clicks=action.amount, interval=0.05, button=action.button)
            elif action.kind == "doubleclick":
                pg.doubleClick(**xy, button=action.button)
            elif action.kind == "rightclick":
                pg.rightClick(**xy)
            elif action.kind == "move":
                pg.moveTo(*at, duration=action.seconds)
            elif action.kind == "drag":
                # dragTo with duration 0 gives some toolkits no motion events between press and release
                pg.dragTo(*at, duration=max(action.seconds, 0.3), button=action.button)
            elif action.kind == "scroll":
                pg.scroll(action.amount, **xy)
            elif action.kind == "type":
                pg.write(action.text or "", interval=action.seconds)
            elif action.kind == "press":
                pg.press(list(action.keys), presses=action.amount, interval=action.seconds)
            elif action.kind == "hotkey":
                pg.hotkey(*action.keys)
            elif action.kind == "wait":
                time.sleep(action.seconds)
        except pg.FailSafeException:
            raise FailSafe() from None
