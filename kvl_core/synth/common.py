"""Shared pieces of the synthetic renderers: fonts, the closed vocabulary, value generators, degradations.

The vocabulary is deliberately closed (a few hundred words written for kvl, plus generated numbers,
prices, dates, times and codes): kvl-nano learns to read from scratch on a CPU budget, and a small
alphabet of recurring words is what makes OCR learnable at that scale (Kimi-VL report §2.3 "OCR data",
scaled down). Every random choice goes through the caller's `random.Random`, so a sample is a pure
function of its RNG seed (numpy noise is seeded from it too).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import random
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFilter, ImageFont

# ---- fonts ----------------------------------------------------------------------------------------

FAMILIES = ("sans", "mono", "serif")  # DejaVu: the classic three, used by screens and by default
# More faces for documents, so a reader learns glyphs rather than one typeface: DejaVu's obliques, STIX
# (a Times-like serif) and Pillow's built-in Aileron (what `ImageFont.load_default` draws with), all
# shipped by matplotlib or Pillow, so every install can generate them. Aileron has no bold face: bold is
# double-struck, as for every family when matplotlib's fonts are missing.
DOC_FAMILIES = FAMILIES + ("sans-oblique", "mono-oblique", "stix", "aileron")
_FILES = {
    ("sans", False): "DejaVuSans.ttf", ("sans", True): "DejaVuSans-Bold.ttf",
    ("mono", False): "DejaVuSansMono.ttf", ("mono", True): "DejaVuSansMono-Bold.ttf",
    ("serif", False): "DejaVuSerif.ttf", ("serif", True): "DejaVuSerif-Bold.ttf",
    ("sans-oblique", False): "DejaVuSans-Oblique.ttf", ("sans-oblique", True): "DejaVuSans-BoldOblique.ttf",
    ("mono-oblique", False): "DejaVuSansMono-Oblique.ttf", ("mono-oblique", True): "DejaVuSansMono-BoldOblique.ttf",
    ("stix", False): "STIXGeneral.ttf", ("stix", True): "STIXGeneralBol.ttf",
}


# Nine more typefaces, none of them a face of bench/nano_ood.py's unseen sets: FiraGO, Noto Sans and Ubuntu
# (humanist sans, two with their italics) and four monospaced faces, from pymupdf-fonts (Artifex's font package
# for PyMuPDF, SIL OFL / Ubuntu Font Licence): a pip package, so every install that asks for them draws the same
# pixels. (family, bold) -> the package's font name.
PACKAGED = {"fira": ("figo", "figbo"), "fira-italic": ("figit", "figbi"), "noto": ("notos", "notosbo"),
            "noto-italic": ("notosit", "notosbi"), "ubuntu": ("ubuntu", "ubuntubo"), "fira-mono": ("fimo", "fimbo"),
            "ubuntu-mono": ("ubuntm", "ubuntmbo"), "space-mono": ("spacemo", "spacembo"),
            "cascadia": ("cascadia", "cascadiab")}
ALL_FAMILIES = DOC_FAMILIES + tuple(PACKAGED)
_REGISTERED: dict[str, tuple[str, str]] = {}  # register_family: name -> (regular, bold) font files


def register_family(name: str, regular: str | Path, bold: str | Path | None = None) -> None:
    """Make a font file drawable as family `name` (your own typefaces; bench/nano_typefaces.py's unseen
    ones). Without a bold file, bold is the regular face (not double-struck: the file's own weight)."""
    from kvl_core.errors import KvlError

    if name in ALL_FAMILIES:
        raise KvlError(f"font family {name!r} is built in; register yours under another name")
    files = (str(regular), str(bold if bold is not None else regular))
    for f in files:
        try:
            ImageFont.truetype(f, 12)
        except OSError as e:
            raise KvlError(f"{f}: not a font file FreeType can open ({e})") from None
    _REGISTERED[name] = files
    get_font.cache_clear()  # the name may have drawn with another file before


@functools.lru_cache(maxsize=1)
def font_dir() -> Path | None:
    """matplotlib's bundled DejaVu fonts (always present where matplotlib is), else None."""
    try:
        import matplotlib
    except ImportError:
        return None
    d = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return d if (d / "DejaVuSans.ttf").exists() else None


@functools.lru_cache(maxsize=1024)
def get_font(family: str, size: int, bold: bool = False):
    """A FreeType font (matplotlib's files, or pymupdf-fonts' for the PACKAGED families); Pillow's built-in
    scalable default (Aileron) for "aileron" and whenever matplotlib's fonts are unavailable. Such a font has
    `kvl_fake_bold` set when bold was asked for: `draw_text` then double-strikes it."""
    if family in _REGISTERED:
        return ImageFont.truetype(_REGISTERED[family][bold], size)
    if family not in ALL_FAMILIES:
        raise ValueError(f"unknown font family {family!r} (one of {', '.join(ALL_FAMILIES + tuple(_REGISTERED))})")
    if family in PACKAGED:
        return ImageFont.truetype(io.BytesIO(_packaged(PACKAGED[family][bold])), size)
    d = font_dir()
    if d is not None and (family, bold) in _FILES and (d / _FILES[family, bold]).exists():
        return ImageFont.truetype(str(d / _FILES[family, bold]), size)
    font = ImageFont.load_default(size)
    font.kvl_fake_bold = bold
    return font


@functools.lru_cache(maxsize=None)
def _packaged(name: str) -> bytes:
    try:
        import pymupdf_fonts
    except ImportError:
        # never a silent fallback: the same recipe must draw the same pages everywhere
        from kvl_core.errors import KvlError

        raise KvlError(f"font {name!r} needs the pymupdf-fonts package: pip install 'kvl[train]'") from None
    return pymupdf_fonts.myfont(name)


def has_real_bold() -> bool:
    return font_dir() is not None


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, fill, bold: bool = False) -> None:
    draw.text(xy, text, font=font, fill=fill)
    if bold and getattr(font, "kvl_fake_bold", False):  # no bold face: double-strike it
        draw.text((xy[0] + 1, xy[1]), text, font=font, fill=fill)


def text_width(font, text: str) -> float:
    return font.getlength(text)


def char_centres(font, text: str, x0: float) -> list[float]:
    """x of the middle of every character's advance, for `text` drawn from x0 (the reading targets)."""
    return [x0 + (font.getlength(text[:i]) + font.getlength(text[: i + 1])) / 2 for i in range(len(text))]


def wrap_words(words: Sequence[str], font, width: float) -> list[str]:
    """Greedy word wrap; a single over-long word gets a line of its own."""
    lines: list[str] = []
    cur: list[str] = []
    for w in words:
        trial = " ".join([*cur, w])
        if cur and font.getlength(trial) > width:
            lines.append(" ".join(cur))
            cur = [w]
        else:
            cur.append(w)
    if cur:
        lines.append(" ".join(cur))
    return lines


# ---- vocabulary (written for kvl; not taken from any word list) ----------------------------------

NOUNS = tuple("""
team report order price office market city house car road water light book page letter box table chair
window door garden tree river station train ticket plan project meeting client customer product service
account payment file folder screen phone email message note list store shop bank school class student
teacher doctor family friend child name date time day week month year morning evening night food bread
coffee tea milk apple lunch dinner kitchen room floor wall paper pen card map bag key job work task idea
question answer problem result system data model test design energy power music game story picture photo
film park beach island village farm field street bridge hotel airport flight weather rain snow sun wind
budget invoice receipt contract supplier delivery package warehouse schedule update version server network
printer battery camera engine driver guest staff manager course lesson exam library museum garage bike
bus boat ship plane club match goal score sale offer cost fee bill tax rate total share stock
""".split())

ADJECTIVES = tuple("""
new old small large big long short quick slow green red blue white black bright dark warm cold clean quiet
busy early late simple clear final full empty open safe local main daily weekly monthly fresh heavy good
great free easy hard next last first second public private annual useful careful happy real short modern
""".split())

VERBS_PAST = tuple("""
sent opened closed checked moved found made built read wrote sold bought paid signed shared saved printed
cleaned painted fixed changed started finished planned visited called asked helped carried packed tested
updated approved reviewed delivered ordered booked added removed cooked washed counted measured
""".split())

VERBS_BASE = tuple("""
send open close check move find make build read write sell buy pay sign share save print clean paint fix
change start finish plan visit call ask help carry pack test update approve review deliver order book add
remove cook wash count measure
""".split())

TIME_WORDS = ("today", "yesterday", "tomorrow", "this week", "last week", "next week", "this month", "soon",
              "on Monday", "on Tuesday", "on Wednesday", "on Thursday", "on Friday", "on Saturday", "on Sunday",
              "in the morning", "in the evening", "before noon", "after lunch")
PREPOSITIONS = ("in", "on", "near", "at", "from", "to", "for", "with", "behind", "under", "over", "by")
DETERMINERS = ("the", "a", "our", "your", "this", "that", "each", "every", "one", "their")
SUBJECTS = ("We", "They", "She", "He", "I", "You", "The team", "The manager", "Our client", "The driver",
            "The staff", "My friend", "The teacher", "Everyone")
MODALS = ("will", "can", "should", "must", "may", "could")

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

FIRST_NAMES = ("Anna", "Ben", "Carla", "David", "Elena", "Frank", "Grace", "Hugo", "Iris", "Jack", "Kate", "Leo",
               "Maria", "Nina", "Omar", "Paul", "Rosa", "Sam", "Tara", "Victor", "Wendy", "Yuki", "Zoe", "Ahmed",
               "Lucas", "Mei", "Ivan", "Priya", "Tom", "Lena")
LAST_NAMES = ("Smith", "Brown", "Lee", "Garcia", "Kim", "Novak", "Silva", "Weber", "Rossi", "Chen", "Patel",
              "Miller", "Costa", "Berg", "Stone", "Wood", "Clark", "Young", "Hill", "Moore", "Adams", "Ford")
CITIES = ("Paris", "Berlin", "Tokyo", "Lima", "Oslo", "Cairo", "Dublin", "Madrid", "Rome", "Seoul", "Boston",
          "Denver", "Sydney", "Vienna", "Prague", "Lisbon", "Toronto", "Austin", "Nairobi", "Delhi")
STATUSES = ("Open", "Closed", "Paid", "Pending", "Shipped", "Done", "Active", "On hold", "Late", "Ready",
            "Draft", "Sent", "Approved", "In progress")
ROLES = ("Designer", "Engineer", "Manager", "Analyst", "Writer", "Driver", "Nurse", "Chef", "Clerk", "Lawyer",
         "Teacher", "Tester", "Editor", "Pilot")

ITEMS = ("Coffee", "Tea", "Bagel", "Sandwich", "Salad", "Soup", "Muffin", "Orange juice", "Water", "Pasta",
         "Pizza", "Burger", "Cookie", "Notebook", "Pen set", "Stapler", "Printer paper", "Ink", "Batteries",
         "USB cable", "Charger", "Headphones", "Mouse", "Keyboard", "Desk lamp", "Towel", "Soap", "Shampoo",
         "Apples", "Bananas", "Bread", "Milk", "Eggs", "Cheese", "Rice", "Butter", "Yogurt", "Chocolate",
         "Tomatoes", "Onions", "Green tea", "Hot chocolate", "Croissant", "Lemonade", "Paint brush", "Tape")
STORES = ("Corner Cafe", "Green Market", "City Books", "Blue Door Bakery", "Northside Hardware", "Sunny Grocery",
          "Harbor Deli", "Maple Office Supply", "Red Kite Coffee", "Oak Street Pharmacy", "River Food Hall",
          "Hilltop Garden Center")

HEADING_NOUNS = ("Report", "Notes", "Plan", "Update", "Summary", "Checklist", "Agenda", "Schedule", "Budget",
                 "Goals", "Results", "Overview", "Tasks", "Reminders", "Guide", "Order", "Details", "Review")
HEADING_ADJS = ("Weekly", "Monthly", "Daily", "Project", "Team", "Meeting", "Travel", "Shopping", "Sales",
                "Office", "Kitchen", "Garden", "Product", "Annual", "Quick", "Final", "Budget", "Store")

KEYS = ("Name", "Date", "Time", "Order", "Invoice", "Account", "Amount", "Status", "Phone", "City", "Due",
        "Ref", "Code", "Room", "Owner", "Project", "Version", "Team", "Price", "Total", "Quantity", "Role",
        "Start", "End", "Email")

SHAPES = ("circle", "square", "triangle", "star", "diamond", "bar")
COLORS = {
    "red": (210, 40, 40), "blue": (40, 80, 210), "green": (40, 160, 60), "yellow": (235, 200, 30),
    "orange": (240, 130, 20), "purple": (130, 60, 180), "black": (20, 20, 20), "gray": (128, 128, 128),
}


# Word lists a random vocabulary replaces (KEYS keep their names, value_for_key dispatches on them; what is
# drawn for a key is KEY_LABELS[key]).
_VOCAB = ("NOUNS", "ADJECTIVES", "VERBS_PAST", "VERBS_BASE", "TIME_WORDS", "PREPOSITIONS", "DETERMINERS", "SUBJECTS",
          "FIRST_NAMES", "LAST_NAMES", "CITIES", "STATUSES", "ROLES", "ITEMS", "STORES", "HEADING_NOUNS",
          "HEADING_ADJS", "MONTHS", "DAYS")
KEY_LABELS: dict[str, str] = {}  # key -> the word drawn for it, inside random_vocabulary only
SALAD = 0.0  # share of sentences and list items that are word salad (no template), inside random_vocabulary
_LOWER, _UPPER, _DIGITS = "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789"


def random_word(rng: random.Random, like: str) -> str:
    """A string shaped like `like` (same length, case and digit pattern, punctuation and spaces kept) with
    random letters and digits: text no reader can guess from a language prior."""
    out = []
    for ch in like:
        if ch.islower():
            out.append(rng.choice(_LOWER))
        elif ch.isupper():
            out.append(rng.choice(_UPPER))
        elif ch.isdigit():
            out.append(rng.choice(_DIGITS))
        else:
            out.append(ch)
    return "".join(out)


@contextlib.contextmanager
def random_vocabulary(rng: random.Random):
    """Within the block, every word list above holds random strings shaped like its words (fresh ones
    per call), so documents keep their layouts and markdown but their words are outside any corpus: a
    model trained on them has to read glyphs, not recall vocabulary. Keys are drawn as random words too, and
    about half the sentences and list items are word salad: the templates' own words ("Please ... before",
    "costs") and their shapes are a prior as strong as a vocabulary, which a reader falls back on where
    text follows no template (measured: kvl-nano wrote template sentences over lines of unrelated nouns).
    Swaps this module's globals (the generators look them up at call time); not for concurrent threads."""
    g = globals()
    saved = {name: g[name] for name in (*_VOCAB, "KEY_LABELS", "SALAD")}
    try:
        for name in _VOCAB:
            g[name] = tuple(random_word(rng, w) for w in saved[name])
        g["KEY_LABELS"] = {k: random_word(rng, k) for k in KEYS}
        g["SALAD"] = 0.5
        yield
    finally:
        g.update(saved)


# ---- value generators -----------------------------------------------------------------------------

def price(rng: random.Random, lo: float = 0.5, hi: float = 60.0) -> int:
    """A price in cents (ints keep totals exact)."""
    return int(round(rng.uniform(lo, hi) * 4)) * 25 if rng.random() < 0.5 else rng.randint(int(lo * 100), int(hi * 100))


def fmt_price(cents: int) -> str:
    return f"${cents // 100:,}.{cents % 100:02d}"


def date(rng: random.Random) -> str:
    y, m, d = rng.randint(2019, 2027), rng.randint(1, 12), rng.randint(1, 28)
    style = rng.randrange(4)
    if style == 0:
        return f"{y}-{m:02d}-{d:02d}"
    if style == 1:
        return f"{d} {MONTHS[m - 1]} {y}"
    if style == 2:
        return f"{MONTHS[m - 1][:3]} {d}, {y}"
    return f"{m:02d}/{d:02d}/{y}"


def clock(rng: random.Random) -> str:
    return f"{rng.randint(7, 20):02d}:{rng.choice((0, 15, 30, 45, rng.randint(0, 59))):02d}"


def code(rng: random.Random) -> str:
    letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
    style = rng.randrange(4)
    if style == 0:
        return f"{rng.choice(('INV', 'ORD', 'REF', 'PO', 'TKT'))}-{rng.randint(100, 99999)}"
    if style == 1:
        return f"{rng.choice(letters)}{rng.choice(letters)}-{rng.randint(10, 999)}"
    if style == 2:
        return f"#{rng.randint(1000, 99999)}"
    return f"{rng.randint(10, 99)}{rng.choice(letters)}{rng.randint(100, 999)}"


def person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def number(rng: random.Random) -> str:
    style = rng.randrange(4)
    if style == 0:
        return str(rng.randint(1, 99))
    if style == 1:
        return f"{rng.randint(100, 99999):,}"
    if style == 2:
        return f"{rng.randint(1, 99)}%"
    return f"{rng.randint(0, 99)}.{rng.randint(0, 9)}"


def phone(rng: random.Random) -> str:
    return f"{rng.randint(200, 989)}-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"


def email(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES).lower()}.{rng.choice(LAST_NAMES).lower()}@{rng.choice(('mail', 'work', 'shop', 'team'))}.com"


def value_for_key(rng: random.Random, key: str) -> str:
    gen = {
        "Name": person, "Owner": person, "Date": date, "Due": date, "Start": date, "End": date, "Time": clock,
        "Order": code, "Invoice": code, "Account": code, "Ref": code, "Code": code, "Phone": phone,
        "Email": email, "City": lambda r: r.choice(CITIES), "Status": lambda r: r.choice(STATUSES),
        "Amount": lambda r: fmt_price(price(r, 5, 900)), "Price": lambda r: fmt_price(price(r)),
        "Total": lambda r: fmt_price(price(r, 5, 900)), "Quantity": lambda r: str(r.randint(1, 48)),
        "Room": lambda r: f"{r.randint(1, 9)}{r.randint(0, 3)}{r.randint(1, 9)}",
        "Version": lambda r: f"{r.randint(0, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)}",
        "Team": lambda r: f"{r.choice(ADJECTIVES).capitalize()} {r.choice(NOUNS)}",
        "Project": lambda r: f"{r.choice(ADJECTIVES).capitalize()} {r.choice(NOUNS)}",
        "Role": lambda r: r.choice(ROLES),
    }[key]
    return gen(rng)


def heading(rng: random.Random) -> str:
    style = rng.randrange(4)
    if style == 0:
        return f"{rng.choice(HEADING_ADJS)} {rng.choice(HEADING_NOUNS)}"
    if style == 1:
        return f"{rng.choice(NOUNS).capitalize()} {rng.choice(HEADING_NOUNS)}"
    if style == 2:
        return f"{rng.choice(HEADING_NOUNS)} for {rng.choice(MONTHS)}"
    return f"{rng.choice(HEADING_ADJS)} {rng.choice(HEADING_NOUNS)} {rng.randint(1, 12)}"


def noun_phrase(rng: random.Random) -> str:
    parts = [rng.choice(DETERMINERS)]
    if rng.random() < 0.6:
        parts.append(rng.choice(ADJECTIVES))
    parts.append(rng.choice(NOUNS))
    return " ".join(parts)


def salad(rng: random.Random, lo: int, hi: int) -> str:
    """lo..hi words from every list, some capitalised, now and then a number, the first word capitalised: text
    that follows no template."""
    pool = (NOUNS, ADJECTIVES, VERBS_BASE, VERBS_PAST, ITEMS, CITIES, LAST_NAMES, PREPOSITIONS, DETERMINERS)
    words = []
    for _ in range(rng.randint(lo, hi)):
        w = rng.choice(rng.choice(pool)) if rng.random() < 0.9 else str(rng.randint(1, 999))
        words.append(w.capitalize() if rng.random() < 0.3 else w)
    s = " ".join(words)
    return s[0].upper() + s[1:]


def sentence(rng: random.Random) -> str:
    """A short, grammatical-looking sentence from templates (inside random_vocabulary, SALAD of them are not)."""
    if SALAD and rng.random() < SALAD:
        return salad(rng, 3, 9) + rng.choice((".", ".", "", "!"))
    t = rng.randrange(6)
    if t == 0:
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS_PAST)} {noun_phrase(rng)} {rng.choice(TIME_WORDS)}"
    elif t == 1:
        s = f"{rng.choice(SUBJECTS)} {rng.choice(MODALS)} {rng.choice(VERBS_BASE)} {noun_phrase(rng)} " \
            f"{rng.choice(PREPOSITIONS)} {noun_phrase(rng)}"
    elif t == 2:
        a, b = rng.sample(ADJECTIVES, 2)
        s = f"{noun_phrase(rng).capitalize()} is {a} and {b}"
    elif t == 3:
        s = f"{noun_phrase(rng).capitalize()} costs {fmt_price(price(rng))} {rng.choice(TIME_WORDS)}"
    elif t == 4:
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS_PAST)} {number(rng)} {rng.choice(NOUNS)}s on {date(rng)}"
    else:
        s = f"Please {rng.choice(VERBS_BASE)} {noun_phrase(rng)} before {clock(rng)}"
    if s[0].islower():
        s = s[0].upper() + s[1:]
    return s + ("!" if t != 5 and rng.random() < 0.1 else ".")


def list_item(rng: random.Random) -> str:
    if SALAD and rng.random() < SALAD:
        return salad(rng, 1, 4)
    t = rng.randrange(5)
    if t == 0:
        return f"{rng.choice(VERBS_BASE).capitalize()} {noun_phrase(rng)}"
    if t == 1:
        return f"{rng.choice(ITEMS)}"
    if t == 2:
        return f"{rng.choice(ADJECTIVES).capitalize()} {rng.choice(NOUNS)} {rng.choice(PREPOSITIONS)} {rng.choice(CITIES)}"
    if t == 3:
        return f"{rng.choice(VERBS_BASE).capitalize()} the {rng.choice(NOUNS)} by {date(rng)}"
    return f"{rng.randint(1, 12)} {rng.choice(NOUNS)}s for {fmt_price(price(rng))}"


# ---- colours and degradations ---------------------------------------------------------------------

def paper_color(rng: random.Random, tint_p: float = 0.3) -> tuple[int, int, int]:
    base = rng.randint(240, 255)
    if rng.random() >= tint_p:
        return (base, base, base)
    return tuple(min(255, base + rng.randint(-6, 3)) for _ in range(3))  # type: ignore[return-value]


def ink_color(rng: random.Random, jitter: float = 1.0) -> tuple[int, int, int]:
    if rng.random() > 0.3 * jitter:
        g = rng.randint(0, int(50 * jitter))
        return (g, g, g)
    return rng.choice(((20, 30, 90), (60, 20, 20), (20, 60, 40), (40, 40, 70)))


def degrade(img: Image.Image, rng: random.Random, *, rotation: float, blur_p: float,
            blur_radius: tuple[float, float], noise: float, fill, p: float = 0.4, noise_p: float = 0.3,
            record: dict | None = None) -> Image.Image:
    """Scanner-like nuisances, each applied with probability `p` (blur `blur_p`, noise `noise_p`): a tiny rotation
    (same size), a slight blur, light Gaussian noise. Bilinear rotation and float32 noise keep this
    cheap; PNG encoding of the noise is then the main cost of a sample. `record["angle"]` receives the
    rotation applied (degrees counter-clockwise about the centre; 0 when none), so glyph positions can follow."""
    if record is not None:
        record["angle"] = 0.0
    if rotation > 0 and rng.random() < p:
        angle = rng.uniform(-rotation, rotation)
        if abs(angle) > 0.05:
            img = img.rotate(angle, resample=Image.BILINEAR, fillcolor=fill)
            if record is not None:
                record["angle"] = angle
    if blur_p > 0 and rng.random() < blur_p:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(*blur_radius)))
    if noise > 0 and rng.random() < noise_p:
        sigma = rng.uniform(0.5, noise)
        import numpy as np

        gen = np.random.default_rng(rng.getrandbits(63))
        arr = np.asarray(img, dtype=np.int16)
        n = (gen.standard_normal(size=arr.shape[:2], dtype=np.float32) * sigma).round().astype(np.int16)
        img = Image.fromarray(np.clip(arr + n[..., None], 0, 255).astype(np.uint8), "RGB")
    return img


def rotate_points(points, angle: float, size: tuple[int, int]):
    """Where points land after `Image.rotate(angle)` (counter-clockwise, about the centre, same size)."""
    if not angle:
        return list(points)
    t = math.radians(angle)
    c, s_ = math.cos(t), math.sin(t)
    cx, cy = size[0] / 2, size[1] / 2
    return [(cx + (x - cx) * c + (y - cy) * s_, cy - (x - cx) * s_ + (y - cy) * c) for x, y in points]


def is_gray(img: Image.Image) -> bool:
    """True when R == G == B everywhere (then the PNG can be stored as one channel, losslessly)."""
    if img.mode == "L":
        return True
    r, g, b = img.split()
    from PIL import ImageChops

    return ImageChops.difference(r, g).getbbox() is None and ImageChops.difference(r, b).getbbox() is None


def round_up(x: float, m: int = 28) -> int:
    return int(math.ceil(x / m) * m)


def image_tokens(size: tuple[int, int]) -> int:
    """LLM tokens of an image under the Kimi-VL processor: one per 28x28 px after padding to 28."""
    w, h = size
    return math.ceil(w / 28) * math.ceil(h / 28)
