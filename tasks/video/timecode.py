"""Times as users write them and as `kvl video scenes` prints them (tasks.md §1.2, §2.1).

Printed: `HH:MM:SS.mmm` (PySceneDetect's timecode style), `[HH:MM:SS]` labels before each frame shown to the
model (Kimi-VL Figure 11 scene splitting), and CMX 3600 `HH:MM:SS:FF` for EDL. Read: `90`, `1.5`, `1.5s`,
`250ms`, `MM:SS(.mmm)`, `HH:MM:SS(.mmm)`, and a frame count `15f` (or a bare integer where a length in frames
is meant, as PySceneDetect's `--min-scene-len 15` does).
"""

from __future__ import annotations

import math
import re

from kvl_core.errors import KvlError

_CLOCK = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")
_SECONDS = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|ms)?$")


def timecode(seconds: float, millis: bool = True) -> str:
    """0 -> '00:00:00.000'; rounds to the millisecond (or to the second with millis=False)."""
    if not math.isfinite(seconds) or seconds < 0:
        seconds = 0.0
    if millis:
        total_ms = int(round(seconds * 1000))
        h, rem = divmod(total_ms, 3_600_000)
        m, rem = divmod(rem, 60_000)
        s, ms = divmod(rem, 1000)
        return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"
    total = int(math.floor(seconds + 1e-9))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


def smpte(frame: int, fps: float) -> str:
    """Non-drop-frame `HH:MM:SS:FF` for frame `frame` at the nominal integer rate (29.97 counts as 30)."""
    base = max(1, int(round(fps)))
    frame = max(0, int(frame))
    s, ff = divmod(frame, base)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}:{ff:02d}"


def clock_to_seconds(text: str) -> float | None:
    """'01:02:03.5' / '2:03' / '12:05' -> seconds; None when `text` is not a clock time."""
    m = _CLOCK.match(text.strip())
    if not m:
        return None
    h, mi, s = m.groups()
    minutes, secs = int(mi), float(s)
    if (h is not None and minutes >= 60) or secs >= 60:
        return None
    return (int(h) if h else 0) * 3600 + minutes * 60 + secs


def parse_time(text: str, what: str = "time") -> float:
    """A user-given point in time -> seconds (KvlError naming `what` when it cannot be read)."""
    raw = str(text).strip().lower()
    sec = clock_to_seconds(raw)
    if sec is not None:
        return sec
    m = _SECONDS.match(raw)
    if m:
        value = float(m.group(1))
        return value / 1000 if m.group(2) == "ms" else value
    raise KvlError(f"{what}: cannot read {text!r} as a time (use seconds like 12.5 or 12.5s, or HH:MM:SS.mmm)")


def parse_length(text: str, what: str = "--min-scene-len") -> tuple[float, int | None]:
    """A length -> (seconds, frames): `0.6s` -> (0.6, None); `15` or `15f` -> (0, 15) counted in frames."""
    raw = str(text).strip().lower()
    if re.fullmatch(r"\d+f?", raw):
        return 0.0, int(raw.rstrip("f"))
    return parse_time(raw, what), None
