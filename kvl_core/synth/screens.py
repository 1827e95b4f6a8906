"""Synthetic desktop screenshots with click targets, for kvl-nano's GUI grounding data (Kimi-VL report
§2.3 "agent data" and §4.1.5 (ScreenSpot-style grounding); tasks.md §1.3).

A screen is a desktop (plain or gradient, optional taskbar) with one or two non-overlapping windows. A
window has a title bar with a close button, an optional menu bar, rows of checkboxes, toggles and text
fields, a row of buttons, and sometimes a line of static text. Every clickable element is a `Target`
with a tight pixel box; labels are distinct across the screen so each instruction names one element.

Boxes: button = the button; checkbox = the box plus its label (both are clickable in real toolkits);
toggle = the switch only (its label is at the left of the row, the switch at the right edge, as in
settings pages); text field = the input box; menu = the menu title with its padding; close = the close
button. The answer is the pyautogui click at the box centre normalised by the screenshot size
(`ground_truth_answer`), in the format of `kvl_core.prompts.gui_answer`.

Like documents, a screen is planned (`plan_screen`: layout, labels, boxes, colours) and then drawn
(`draw_screen`). Default size 448 x 336 = 192 LLM image tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw

from kvl_core.prompts import gui_answer
from kvl_core.synth import common as C
from kvl_core.synth.documents import Glyph

KINDS = ("button", "checkbox", "toggle", "field", "menu", "close")

BUTTONS = ("Save", "Cancel", "OK", "Apply", "Open", "Delete", "Send", "Search", "Next", "Back", "Print",
           "Export", "Import", "Upload", "Download", "Refresh", "Submit", "Reset", "Share", "Edit", "Copy",
           "Paste", "Help", "Sign in", "Log out", "Add", "Remove", "Continue", "Done", "Browse", "Install",
           "Update", "Retry", "Skip", "Finish", "Connect", "Preview", "Rename", "Archive", "Undo", "Redo")
CHECKBOXES = ("Send a Do Not Track request", "Remember me", "Show hidden files", "Enable notifications",
              "Start on login", "Use dark theme", "Check for updates", "Block pop-ups", "Save passwords",
              "Show line numbers", "Auto-save every 5 minutes", "Sync over mobile data", "Open links in a new tab",
              "Play sounds", "Show preview", "Keep me signed in", "Accept the terms", "Include subfolders",
              "Match case", "Whole words only", "Ask before closing", "Show grid", "Snap to grid",
              "Compress images", "Send usage statistics", "Hide file extensions", "Print in color",
              "Email me a copy", "Show week numbers", "Use spell check", "Wrap long lines", "Open at startup")
TOGGLES = ("Wi-Fi", "Bluetooth", "Airplane mode", "Dark mode", "Location", "Do not disturb", "Night light",
           "Auto-rotate", "Hotspot", "VPN", "Battery saver", "Notifications", "Sound", "Auto-brightness",
           "Mobile data", "Focus mode", "Camera access", "Microphone", "Sync", "Backups")
MENUS = ("File", "Edit", "View", "Insert", "Format", "Tools", "Window", "Help", "Go", "Run", "Image", "Layer",
         "Select", "History", "Bookmarks", "Table", "Project", "Build")
FIELDS = ("Name", "Email", "Password", "Search", "Address", "City", "Phone", "Username", "Subject", "Title",
          "Comment", "Amount", "Date", "Company", "Zip code", "Website", "Message", "Folder", "Tags", "Quantity")
TITLES = ("Settings", "Preferences", "Sign in", "New message", "Print", "Save as", "Network", "Display",
          "Privacy", "Account", "Options", "Find and replace", "Export", "Sound", "Notifications", "Checkout",
          "Profile", "Downloads", "Notes", "Mail", "Editor", "Photos", "Calendar", "Terminal", "Browser")
STATIC = ("Choose what to sync.", "Changes apply after restart.", "All fields are required.",
          "Your data stays on this device.", "Pick the options you want.", "Last saved 2 minutes ago.")

_ACCENTS = ((40, 110, 220), (30, 140, 90), (200, 80, 40), (120, 70, 190), (20, 130, 160), (200, 50, 90))


@dataclass(frozen=True)
class ScreenSpec:
    size: tuple[int, int] = (448, 336)
    windows: tuple[int, int] = (1, 2)
    elements: tuple[int, int] = (4, 10)  # clickable elements on the whole screen
    font_size: tuple[int, int] = (11, 14)
    fonts: tuple[str, ...] = ("sans",)
    menu_bar_p: float = 0.5
    taskbar_p: float = 0.5
    dark_p: float = 0.2
    static_text_p: float = 0.3
    noise: float = 0.0  # screenshots are clean by default

    def __post_init__(self) -> None:
        if self.size[0] < 224 or self.size[1] < 168:
            raise ValueError("ScreenSpec.size must be at least 224 x 168")
        if not 1 <= self.windows[0] <= self.windows[1] <= 2:
            raise ValueError("ScreenSpec.windows must lie within (1, 2)")
        if not 1 <= self.elements[0] <= self.elements[1]:
            raise ValueError("ScreenSpec.elements must be an increasing pair >= 1")


@dataclass
class Target:
    """One clickable element: `bbox` is (x1, y1, x2, y2) in pixels, x2/y2 exclusive."""

    instruction: str
    bbox: tuple[int, int, int, int]
    kind: str
    label: str
    action: str = ""  # the one-sentence action of the answer
    window: tuple[int, int, int, int] = (0, 0, 0, 0)  # box of the window holding it
    state: bool | None = None  # checkbox checked / toggle on

    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.bbox
        return (x1 + x2) / 2, (y1 + y2) / 2


@dataclass
class _Widget:
    kind: str  # a KINDS member, or "text" (static, not clickable)
    label: str
    box: tuple[int, int, int, int]  # the target box
    state: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # drawing details (label position, value...)


@dataclass
class _Window:
    box: tuple[int, int, int, int]
    title: str
    title_h: int
    menu_h: int
    widgets: list[_Widget]


@dataclass
class ScreenPlan:
    size: tuple[int, int]
    family: str
    font_size: int
    dark: bool
    accent: tuple[int, int, int]
    desktop: tuple[tuple[int, int, int], tuple[int, int, int]]  # gradient top, bottom
    taskbar_h: int
    clock: str
    windows: list[_Window]
    targets: list[Target]


# ---- instructions -----------------------------------------------------------------------------------

def instruction_for(rng: random.Random, kind: str, label: str, state: bool | None, title: str = "") -> tuple[str, str]:
    """(instruction, action sentence) in one of a few phrasings."""
    if kind == "button":
        ins = rng.choice((f"Click the {label} button", f"Press {label}", f"Click {label}",
                          f"Select the {label} button", f"Hit the {label} button"))
        return ins, f"Click the {label} button."
    if kind == "checkbox":
        if state:
            ins = rng.choice((f"Disable {label}", f"Uncheck {label}", f"Clear the {label} checkbox",
                              f"Turn off {label}"))
            return ins, f'Click the checkbox "{label}" to clear it.'
        ins = rng.choice((f"Enable {label}", f"Check {label}", f"Tick the {label} checkbox", f"Turn on {label}"))
        return ins, f'Click the checkbox "{label}" to check it.'
    if kind == "toggle":
        if state:
            ins = rng.choice((f"Turn off {label}", f"Disable {label}", f"Switch off {label}"))
            return ins, f"Click the {label} switch to turn it off."
        ins = rng.choice((f"Turn on {label}", f"Enable {label}", f"Switch on {label}"))
        return ins, f"Click the {label} switch to turn it on."
    if kind == "field":
        ins = rng.choice((f"Click the {label} field", f"Focus the {label} text box", f"Click in the {label} box",
                          f"Select the {label} input"))
        return ins, f"Click the {label} text field."
    if kind == "menu":
        ins = rng.choice((f"Open the {label} menu", f"Click {label} in the menu bar", f"Show the {label} menu"))
        return ins, f"Click the {label} menu in the menu bar."
    if kind == "close":
        ins = rng.choice((f"Close the {title} window", f"Close {title}", f"Click the close button of {title}"))
        return ins, f"Click the close button of the {title} window."
    raise ValueError(f"unknown target kind {kind!r}")


def ground_truth_answer(target: Target, size: tuple[int, int]) -> str:
    """The agent-format answer that clicks the centre of `target` on a screenshot of `size` (w, h)."""
    cx, cy = target.center()
    w, h = size
    return gui_answer(target.action, f"pyautogui.click(x={cx / w:.3f}, y={cy / h:.3f})")


# ---- planning ---------------------------------------------------------------------------------------

class _Labels:
    """Distinct labels across the screen (case-insensitive, across kinds and window titles)."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def take(self, pool: tuple[str, ...]) -> str | None:
        free = [x for x in pool if x.lower() not in self.used]
        if not free:
            return None
        x = self.rng.choice(free)
        self.used.add(x.lower())
        return x


def _window_content(rng: random.Random, labels: _Labels, budget: int, spec: ScreenSpec) -> tuple[list, list, list, bool]:
    """(menus, rows, buttons, static?) for a window with `budget` clickable elements (close included)."""
    left = budget - 1  # the close button
    menus: list[str] = []
    if left >= 3 and rng.random() < spec.menu_bar_p:
        for _ in range(min(rng.randint(2, 4), left - 1)):
            m = labels.take(MENUS)
            if m:
                menus.append(m)
        left -= len(menus)
    n_buttons = min(left, rng.randint(1, 3)) if left > 1 else left
    if left >= 1 and rng.random() < 0.15:
        n_buttons = 0
    rows: list[tuple[str, str, bool]] = []
    theme = rng.choice(("mixed", "settings", "form"))
    for _ in range(left - n_buttons):
        if theme == "settings":
            kind = rng.choice(("checkbox", "toggle", "toggle", "checkbox", "field"))
        elif theme == "form":
            kind = rng.choice(("field", "field", "checkbox", "toggle"))
        else:
            kind = rng.choice(("checkbox", "toggle", "field"))
        pool = {"checkbox": CHECKBOXES, "toggle": TOGGLES, "field": FIELDS}[kind]
        lab = labels.take(pool)
        if lab:
            rows.append((kind, lab, rng.random() < 0.5))
    buttons = [b for b in (labels.take(BUTTONS) for _ in range(n_buttons)) if b]
    return menus, rows, buttons, rng.random() < spec.static_text_p


def _layout_window(rng: random.Random, font, bold, fs: int, title: str, content, region, min_pad: int = 6):
    """Place a window inside `region` (x1, y1, x2, y2); returns None when the content cannot fit."""
    menus, rows, buttons, static = content
    pad = rng.randint(min_pad, min_pad + 6)
    title_h = fs + rng.randint(9, 13)
    menu_h = fs + 9 if menus else 0
    row_h = fs + rng.randint(11, 15)
    btn_h = fs + 11
    box_s = fs + 1
    sw_w, sw_h = 2 * fs + 6, fs + 4

    def row_width(kind: str, label: str) -> float:
        if kind == "checkbox":
            return box_s + 7 + font.getlength(label)
        if kind == "toggle":
            return font.getlength(label) + 16 + sw_w
        return font.getlength(label + ":") + 10 + 90  # label + a 90-px input at least

    need_w = max([font.getlength(title) + title_h + 30]
                 + [row_width(k, lab) + 2 * pad for k, lab, _ in rows]
                 + [sum(font.getlength(b) + 2 * fs + 8 for b in buttons) + 2 * pad]
                 + [sum(font.getlength(m) + 16 for m in menus) + 2 * pad])
    static_text = rng.choice(STATIC) if static else None
    if static_text:
        need_w = max(need_w, font.getlength(static_text) + 2 * pad)
    need_h = title_h + menu_h + pad + len(rows) * row_h + (btn_h + pad if buttons else 0) + pad
    if static_text:
        need_h += row_h
    rx1, ry1, rx2, ry2 = region
    if need_w > rx2 - rx1 or need_h > ry2 - ry1:
        return None
    w = rng.randint(int(need_w) + 1, rx2 - rx1)
    h = rng.randint(int(need_h), min(ry2 - ry1, int(need_h) + 60))
    x1 = rng.randint(rx1, rx2 - w)
    y1 = rng.randint(ry1, ry2 - h)
    x2, y2 = x1 + w, y1 + h
    widgets: list[_Widget] = []
    cs = title_h - 8
    widgets.append(_Widget("close", title, (x2 - 5 - cs, y1 + 4, x2 - 5, y1 + 4 + cs)))
    y = y1 + title_h
    if menus:
        mx = x1 + 4
        for m in menus:
            mw = round(font.getlength(m)) + 12
            widgets.append(_Widget("menu", m, (mx, y + 1, mx + mw, y + menu_h - 1)))
            mx += mw + 2
        y += menu_h
    y += pad
    if static_text:
        widgets.append(_Widget("text", static_text, (x1 + pad, y, x2 - pad, y + row_h)))
        y += row_h
    for kind, lab, state in rows:
        cy = y + row_h // 2
        if kind == "checkbox":
            bx = x1 + pad
            tw = round(font.getlength(lab))
            th = fs + 4
            top = min(cy - box_s // 2, cy - th // 2)
            bottom = max(cy - box_s // 2 + box_s, cy - th // 2 + th)
            widgets.append(_Widget("checkbox", lab, (bx, top, bx + box_s + 7 + tw, bottom), state,
                                   {"box": (bx, cy - box_s // 2, bx + box_s, cy - box_s // 2 + box_s),
                                    "text": (bx + box_s + 7, cy)}))
        elif kind == "toggle":
            sx2 = x2 - pad
            widgets.append(_Widget("toggle", lab, (sx2 - sw_w, cy - sw_h // 2, sx2, cy - sw_h // 2 + sw_h), state,
                                   {"text": (x1 + pad, cy)}))
        else:
            lx = x1 + pad
            fx1 = lx + round(font.getlength(lab + ":")) + 10
            fx2 = x2 - pad
            fh = fs + 9
            value = ""
            if state and lab not in ("Password",):
                value = {"Email": C.email(rng), "Phone": C.phone(rng), "Date": C.date(rng),
                         "Amount": C.fmt_price(C.price(rng)), "City": rng.choice(C.CITIES)}.get(
                             lab, rng.choice(C.FIRST_NAMES) if lab in ("Name", "Username") else "")
                while value and font.getlength(value) > fx2 - fx1 - 8:
                    value = value[:-1]
            widgets.append(_Widget("field", lab, (fx1, cy - fh // 2, fx2, cy - fh // 2 + fh), None,
                                   {"text": (lx, cy), "value": value}))
        y += row_h
    if buttons:
        widths = [round(font.getlength(b)) + 2 * fs for b in buttons]
        total = sum(widths) + 8 * (len(buttons) - 1)
        align = rng.choice(("right", "right", "left", "center"))
        bx = {"right": x2 - pad - total, "left": x1 + pad, "center": (x1 + x2 - total) // 2}[align]
        by = y2 - pad - btn_h
        primary = rng.randrange(len(buttons)) if rng.random() < 0.6 else -1
        for i, (b, bw) in enumerate(zip(buttons, widths)):
            widgets.append(_Widget("button", b, (bx, by, bx + bw, by + btn_h), None, {"primary": i == primary}))
            bx += bw + 8
    return _Window((x1, y1, x2, y2), title, title_h, menu_h, widgets)


def plan_screen(rng: random.Random, spec: ScreenSpec = ScreenSpec()) -> ScreenPlan:
    W, H = spec.size
    fs = rng.randint(*spec.font_size)
    family = rng.choice(spec.fonts)
    font, bold = C.get_font(family, fs), C.get_font(family, fs, True)
    dark = rng.random() < spec.dark_p
    taskbar_h = rng.randint(20, 26) if rng.random() < spec.taskbar_p else 0
    top = rng.choice(((70, 110, 160), (40, 60, 90), (120, 150, 130), (150, 120, 160), (60, 60, 60), (200, 200, 210)))
    bottom = tuple(max(0, min(255, c + rng.randint(-50, 30))) for c in top)
    area = (4, 4, W - 4, H - 4 - taskbar_h)
    for _attempt in range(30):
        labels = _Labels(rng)
        n_win = rng.randint(*spec.windows)
        n_el = rng.randint(max(spec.elements[0], 2 * n_win), max(spec.elements[1], 2 * n_win))
        if n_win == 2:
            split = rng.randint(int(W * 0.42), int(W * 0.58))
            regions = [(area[0], area[1], split - 3, area[3]), (split + 3, area[1], area[2], area[3])]
            budgets = [n_el // 2 + (n_el % 2) * rng.randint(0, 1)]
            budgets.append(n_el - budgets[0])
        else:
            regions, budgets = [area], [n_el]
        windows = []
        for region, budget in zip(regions, budgets):
            title = labels.take(TITLES) or "Window"
            content = _window_content(rng, labels, budget, spec)
            win = None
            while win is None:
                win = _layout_window(rng, font, bold, fs, title, content, region)
                if win is not None:
                    break
                menus, rows, buttons, static = content
                if static:
                    content = (menus, rows, buttons, False)
                elif rows:
                    content = (menus, rows[:-1], buttons, static)
                elif len(buttons) > 1:
                    content = (menus, rows, buttons[:-1], static)
                elif menus:
                    content = (menus[:-1], rows, buttons, static)
                else:
                    break
            if win is not None:
                windows.append(win)
        n_clickable = sum(1 for w in windows for x in w.widgets if x.kind != "text")
        if windows and n_clickable >= spec.elements[0]:
            break
    targets = []
    for win in windows:
        for x in win.widgets:
            if x.kind == "text":
                continue
            ins, action = instruction_for(rng, x.kind, x.label, x.state, win.title)
            targets.append(Target(ins, x.box, x.kind, x.label, action, win.box, x.state))
    return ScreenPlan((W, H), family, fs, dark, rng.choice(_ACCENTS), (top, bottom), taskbar_h, C.clock(rng),
                      windows, targets)


# ---- drawing ----------------------------------------------------------------------------------------

def draw_screen(plan: ScreenPlan, rng: random.Random | None = None, spec: ScreenSpec = ScreenSpec()) -> Image.Image:
    W, H = plan.size
    img = Image.new("RGB", (W, H), plan.desktop[0])
    d = ImageDraw.Draw(img)
    (r1, g1, b1), (r2, g2, b2) = plan.desktop
    for y in range(0, H, 4):  # banded gradient: cheap and PNG-friendly
        t = y / max(1, H - 1)
        d.rectangle((0, y, W, y + 3), fill=(round(r1 + (r2 - r1) * t), round(g1 + (g2 - g1) * t), round(b1 + (b2 - b1) * t)))
    font = C.get_font(plan.family, plan.font_size)
    bold = C.get_font(plan.family, plan.font_size, True)
    if plan.dark:
        win_bg, bar_bg, fg, muted, line, ctrl = (45, 45, 50), (32, 32, 36), (235, 235, 235), (160, 160, 165), (90, 90, 95), (70, 70, 76)
    else:
        win_bg, bar_bg, fg, muted, line, ctrl = (248, 248, 248), (225, 226, 230), (25, 25, 25), (120, 120, 125), (170, 170, 175), (232, 232, 236)
    acc = plan.accent
    if plan.taskbar_h:
        d.rectangle((0, H - plan.taskbar_h, W, H), fill=(30, 32, 38))
        d.text((W - 8, H - plan.taskbar_h / 2), plan.clock, font=font, fill=(230, 230, 230), anchor="rm")
    for win in plan.windows:
        x1, y1, x2, y2 = win.box
        d.rectangle((x1 + 2, y1 + 3, x2 + 2, y2 + 3), fill=(0, 0, 0) if plan.dark else (90, 90, 90))  # shadow
        d.rectangle((x1, y1, x2 - 1, y2 - 1), fill=win_bg, outline=line)
        d.rectangle((x1, y1, x2 - 1, y1 + win.title_h - 1), fill=bar_bg, outline=line)
        d.text((x1 + 8, y1 + win.title_h / 2), win.title, font=bold, fill=fg, anchor="lm")
        if win.menu_h:
            my = y1 + win.title_h
            d.line((x1, my + win.menu_h - 1, x2 - 1, my + win.menu_h - 1), fill=line)
        for w in win.widgets:
            bx1, by1, bx2, by2 = w.box
            cy = (by1 + by2) / 2
            if w.kind == "close":
                d.rectangle((bx1, by1, bx2 - 1, by2 - 1), fill=(210, 70, 60))
                m = max(3, (bx2 - bx1) // 4)
                d.line((bx1 + m, by1 + m, bx2 - 1 - m, by2 - 1 - m), fill=(255, 255, 255), width=2)
                d.line((bx1 + m, by2 - 1 - m, bx2 - 1 - m, by1 + m), fill=(255, 255, 255), width=2)
            elif w.kind == "menu":
                d.text(((bx1 + bx2) / 2, cy), w.label, font=font, fill=fg, anchor="mm")
            elif w.kind == "text":
                d.text((bx1, cy), w.label, font=font, fill=muted, anchor="lm")
            elif w.kind == "button":
                primary = w.extra.get("primary")
                d.rounded_rectangle((bx1, by1, bx2 - 1, by2 - 1), radius=4, fill=acc if primary else ctrl,
                                    outline=acc if primary else line)
                d.text(((bx1 + bx2) / 2, cy), w.label, font=font, fill=(255, 255, 255) if primary else fg, anchor="mm")
            elif w.kind == "checkbox":
                cx1, cy1, cx2, cy2 = w.extra["box"]
                if w.state:
                    d.rounded_rectangle((cx1, cy1, cx2 - 1, cy2 - 1), radius=2, fill=acc, outline=acc)
                    s = cx2 - cx1
                    d.line((cx1 + s * 0.22, cy1 + s * 0.52, cx1 + s * 0.42, cy1 + s * 0.72, cx1 + s * 0.78, cy1 + s * 0.28),
                           fill=(255, 255, 255), width=2)
                else:
                    d.rounded_rectangle((cx1, cy1, cx2 - 1, cy2 - 1), radius=2, fill=win_bg, outline=muted)
                d.text(w.extra["text"], w.label, font=font, fill=fg, anchor="lm")
            elif w.kind == "toggle":
                d.text(w.extra["text"], w.label, font=font, fill=fg, anchor="lm")
                h = by2 - by1
                d.rounded_rectangle((bx1, by1, bx2 - 1, by2 - 1), radius=h // 2, fill=acc if w.state else (line if not plan.dark else ctrl))
                k = h - 4
                kx = bx2 - 3 - k if w.state else bx1 + 2
                d.ellipse((kx, by1 + 2, kx + k, by1 + 2 + k), fill=(255, 255, 255))
            elif w.kind == "field":
                d.text(w.extra["text"], w.label + ":", font=font, fill=fg, anchor="lm")
                d.rectangle((bx1, by1, bx2 - 1, by2 - 1), fill=(255, 255, 255) if not plan.dark else (30, 30, 34), outline=muted)
                if w.extra.get("value"):
                    d.text((bx1 + 4, cy), w.extra["value"], font=font, fill=fg, anchor="lm")
    if spec.noise > 0 and rng is not None:
        img = C.degrade(img, rng, rotation=0.0, blur_p=0.0, blur_radius=(0.0, 0.0), noise=spec.noise, fill=None)
    return img


# Marks for the controls that have no text: one glyph at the control's centre, all outside ASCII so the
# reading stages give them one class ("other") and the language model tells them apart by context.
MARKS = {"close": "\u00d7", "checkbox": "\u2610", "toggle": "\u25ef", "field": "\u25ad"}


def _text_glyphs(text: str, font, xy: tuple[float, float], anchor: str, bold: bool, size: int) -> list[Glyph]:
    """Centres of the characters `ImageDraw.text(xy, text, anchor=anchor)` draws (anchors l/m/r + m)."""
    x, y = xy
    width = font.getlength(text)
    x0 = {"l": x, "m": x - width / 2, "r": x - width}[anchor[0]]
    _, b0, _, b1 = font.getbbox("x", anchor="lm")  # the x-height band, relative to the middle anchor
    cy = y + (b0 + b1) / 2
    return [Glyph(ch, cx, cy, size, bold) for ch, cx in zip(text, C.char_centres(font, text, x0))]


def glyphs(plan: ScreenPlan) -> list[Glyph]:
    """Every character `draw_screen` writes and one mark (`MARKS`) per text-less control, in drawing order:
    the per-patch targets of the reading stages on screens (training/reading.py)."""
    W, H = plan.size
    font = C.get_font(plan.family, plan.font_size)
    bold = C.get_font(plan.family, plan.font_size, True)
    fs = plan.font_size

    def mark(kind: str, box) -> Glyph:
        return Glyph(MARKS[kind], (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, fs, False)

    out: list[Glyph] = []
    if plan.taskbar_h:
        out += _text_glyphs(plan.clock, font, (W - 8, H - plan.taskbar_h / 2), "rm", False, fs)
    for win in plan.windows:
        x1, y1 = win.box[:2]
        out += _text_glyphs(win.title, bold, (x1 + 8, y1 + win.title_h / 2), "lm", True, fs)
        for w in win.widgets:
            bx1, by1, bx2, by2 = w.box
            cy = (by1 + by2) / 2
            if w.kind == "close":
                out.append(mark("close", w.box))
            elif w.kind in ("menu", "button"):
                out += _text_glyphs(w.label, font, ((bx1 + bx2) / 2, cy), "mm", False, fs)
            elif w.kind == "text":
                out += _text_glyphs(w.label, font, (bx1, cy), "lm", False, fs)
            elif w.kind == "checkbox":
                out.append(mark("checkbox", w.extra["box"]))
                out += _text_glyphs(w.label, font, w.extra["text"], "lm", False, fs)
            elif w.kind == "toggle":
                out += _text_glyphs(w.label, font, w.extra["text"], "lm", False, fs)
                out.append(mark("toggle", w.box))
            elif w.kind == "field":
                out += _text_glyphs(w.label + ":", font, w.extra["text"], "lm", False, fs)
                if w.extra.get("value"):
                    out += _text_glyphs(w.extra["value"], font, (bx1 + 4, cy), "lm", False, fs)
                else:
                    out.append(mark("field", w.box))
    return out


def render_screen(rng: random.Random, spec: ScreenSpec = ScreenSpec()) -> tuple[Image.Image, list[Target]]:
    """(screenshot, its clickable targets)."""
    plan = plan_screen(rng, spec)
    return draw_screen(plan, rng, spec), plan.targets


__all__ = ["KINDS", "MARKS", "ScreenPlan", "ScreenSpec", "Target", "draw_screen", "glyphs", "ground_truth_answer", "instruction_for",
           "plan_screen", "render_screen"]
