"""Deterministic test-card images: same spec → same bytes, fast enough for throughput benchmarks.

A card is a seed- and prompt-coloured background (a rotated gradient plus colour blocks whose
number, size and spread grow with `creativity`), a creativity badge with a four-step meter, and a
dark panel with the wrapped prompt, the seed, the size and format, and one chip per reference image
(its average colour and a bar for its strength). Backgrounds are painted at 1/8 scale and upscaled;
text masks that repeat across requests (prompt blocks, badges) are cached.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont, ImageOps

RGB = tuple[int, int, int]
FORMATS = {
    "JPG": ("JPEG", "jpg", "image/jpeg"),
    "PNG": ("PNG", "png", "image/png"),
    "WEBP": ("WEBP", "webp", "image/webp"),
}
CREATIVITY_LEVELS = ("raw", "low", "medium", "high")
_CREATIVITY_COLOUR: dict[str, RGB] = {
    "raw": (150, 150, 150),
    "low": (70, 140, 230),
    "medium": (60, 185, 110),
    "high": (235, 80, 170),
}
# Blocks per creativity level: (count, largest size as a fraction of the short side, hue spread).
_BLOCKS: dict[str, tuple[int, float, float]] = {
    "raw": (0, 0.0, 0.0),
    "low": (4, 0.45, 0.06),
    "medium": (14, 0.3, 0.22),
    "high": (48, 0.18, 0.5),
}
_WHITE: RGB = (245, 245, 245)
_PANEL: RGB = (16, 16, 20)


@dataclass(frozen=True, slots=True)
class RenderSpec:
    """Everything an image depends on (never a taskUUID or a delivery setting)."""

    width: int
    height: int
    prompt: str
    seed: int
    creativity: str
    tag: str  # the label in the top corner: the model's `card_tag` (pipeline/models)
    refs: tuple[tuple[float, RGB], ...] = ()  # (strength, average colour of the reference)
    moodboards: int = 0
    fmt: str = "JPG"
    quality: int = 95


def extension(fmt: str) -> str:
    """File extension of an outputFormat ("JPG" → "jpg")."""
    return FORMATS[fmt][1]


def content_type(fmt: str) -> str:
    """MIME type of an outputFormat."""
    return FORMATS[fmt][2]


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, max(0.0, min(1.0, s)), max(0.0, min(1.0, v)))
    return (round(r * 255), round(g * 255), round(b * 255))


@lru_cache(maxsize=128)
def _gradient(angle: int, size: tuple[int, int]) -> Image.Image:
    """A linear gradient ('L') rotated by `angle` degrees, at `size` (cached, never mutated)."""
    big = Image.linear_gradient("L").resize((512, 512), Image.Resampling.BILINEAR)
    turned = big.rotate(angle, resample=Image.Resampling.BILINEAR).crop((128, 128, 384, 384))
    return turned.resize(size, Image.Resampling.BILINEAR)


def _background(spec: RenderSpec, digest: bytes, rng: random.Random) -> Image.Image:
    w, h = spec.width, spec.height
    small = (max(1, w // 8), max(1, h // 8))
    hue = digest[0] / 255.0
    c1 = _hsv(hue, 0.5 + digest[1] / 1020.0, 0.78)
    c2 = _hsv(hue + 0.12 + rng.random() * 0.4, 0.65, 0.3 + rng.random() * 0.2)
    angle = rng.randrange(0, 360, 15)
    card = ImageOps.colorize(_gradient(angle, small), c2, c1)
    count, largest, spread = _BLOCKS.get(spec.creativity, _BLOCKS["medium"])
    draw = ImageDraw.Draw(card)
    short = min(small)
    for i in range(count):
        bw = max(2, int(short * largest * (0.35 + rng.random() * 0.65)))
        bh = max(2, int(bw * (0.5 + rng.random())))
        x, y = rng.randrange(-bw // 2, small[0]), rng.randrange(-bh // 2, small[1])
        colour = _hsv(
            hue + (rng.random() - 0.5) * 2 * spread,
            0.45 + 0.5 * rng.random(),
            0.35 + 0.6 * rng.random(),
        )
        if i % 3 == 2:
            draw.ellipse((x, y, x + bw, y + bh), fill=colour)
        else:
            draw.rectangle((x, y, x + bw, y + bh), fill=colour)
    for strength, ref_colour in spec.refs:  # a visible pull toward (or away from) each reference
        toward = ref_colour if strength >= 0 else tuple(255 - c for c in ref_colour)
        card = Image.blend(card, Image.new("RGB", small, toward), min(0.7, 0.35 * abs(strength)))
    return card.resize((w, h), Image.Resampling.NEAREST)


def _wrap(text: str, size: int, max_width: int, max_lines: int) -> list[str]:
    font = _font(size)
    words = text.split() or [""]
    lines: list[str] = []
    line = ""
    for word in words:
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= max_width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + " …") > max_width:
            last = last[:-1]
        lines[-1] = last.rstrip() + " …"
    return lines


@lru_cache(maxsize=256)
def _text_mask(text: str, size: int, max_width: int, max_lines: int) -> Image.Image:
    """White-on-black 'L' mask of `text` wrapped to `max_width` (cached, never mutated)."""
    lines = _wrap(text, size, max_width, max_lines)
    step = int(size * 1.2)
    mask = Image.new("L", (max_width, max(1, step * len(lines))), 0)
    draw = ImageDraw.Draw(mask)
    for i, line in enumerate(lines):
        draw.text((0, i * step), line, font=_font(size), fill=255)
    return mask


def _paste_text(
    card: Image.Image,
    xy: tuple[int, int],
    text: str,
    size: int,
    colour: RGB,
    max_width: int,
    max_lines: int = 1,
) -> int:
    """Paste cached wrapped text at `xy`; return its height in pixels."""
    mask = _text_mask(text, size, max_width, max_lines)
    card.paste(colour, (xy[0], xy[1], xy[0] + mask.width, xy[1] + mask.height), mask)
    return mask.height


def _badge(card: Image.Image, creativity: str, short: int, margin: int) -> None:
    size = max(12, short // 22)
    label = f"creativity {creativity}"
    width = int(_font(size).getlength(label)) + 2 * size
    x0 = card.width - margin - width
    y0 = margin
    colour = _CREATIVITY_COLOUR.get(creativity, _WHITE)
    draw = ImageDraw.Draw(card)
    height = int(size * 2.6)
    draw.rectangle((x0, y0, x0 + width, y0 + height), fill=_PANEL)
    _paste_text(card, (x0 + size, y0 + size // 3), label, size, colour, width - size)
    level = CREATIVITY_LEVELS.index(creativity) if creativity in CREATIVITY_LEVELS else 2
    seg = (width - 2 * size) // 4
    top = y0 + int(size * 1.7)
    for i in range(4):
        fill = colour if i <= level else (60, 60, 66)
        draw.rectangle(
            (x0 + size + i * seg, top, x0 + size + (i + 1) * seg - 4, top + size // 2), fill=fill
        )


def _ref_chips(card: Image.Image, spec: RenderSpec, x: int, y: int, inner: int, size: int) -> int:
    draw = ImageDraw.Draw(card)
    per_row = 5
    chip_w = inner // per_row
    chip_h = int(size * 1.6)
    for i, (strength, colour) in enumerate(spec.refs):
        cx = x + (i % per_row) * chip_w
        cy = y + (i // per_row) * (chip_h + size // 3)
        draw.rectangle((cx, cy, cx + chip_h, cy + chip_h), fill=colour, outline=_WHITE)
        _paste_text(
            card,
            (cx + chip_h + size // 3, cy),
            f"{strength:+.2f}",
            size,
            _WHITE,
            max(1, chip_w - chip_h - size // 2),
        )
        bar_x = cx + chip_h + size // 3
        bar_w = max(4, chip_w - chip_h - size)
        mid = bar_x + bar_w // 2
        bar_y = cy + int(size * 1.25)
        draw.line((bar_x, bar_y, bar_x + bar_w, bar_y), fill=(90, 90, 96), width=2)
        end = mid + int(bar_w / 2 * max(-2.0, min(2.0, strength)) / 2)
        bar_colour = (90, 210, 120) if strength >= 0 else (235, 90, 90)
        draw.line((min(mid, end), bar_y, max(mid, end), bar_y), fill=bar_colour, width=4)
    rows = (len(spec.refs) + per_row - 1) // per_row
    return rows * (chip_h + size // 3)


def draw_card(spec: RenderSpec) -> Image.Image:
    """The test card of `spec` as an RGB image of exactly width × height."""
    digest = hashlib.sha256(spec.prompt.encode()).digest()
    rng = random.Random(f"{spec.seed}:{digest.hex()}:{spec.creativity}")
    card = _background(spec, digest, rng)
    w, h = spec.width, spec.height
    short = min(w, h)
    margin = max(8, short // 32)
    inner = w - 2 * margin
    small, mid = max(11, short // 48), max(12, short // 34)
    prompt_size, big = max(12, short // 24), max(14, short // 16)
    draw = ImageDraw.Draw(card)
    tag = spec.tag
    tag_w = int(_font(small).getlength(tag)) + small
    draw.rectangle((margin, margin, margin + tag_w, margin + int(small * 1.7)), fill=_PANEL)
    _paste_text(card, (margin + small // 2, margin + small // 4), tag, small, _WHITE, tag_w)
    _badge(card, spec.creativity, short, margin)

    prompt_mask = _text_mask(spec.prompt, prompt_size, inner, 4)
    lines = [
        (f"seed {spec.seed}", big, (255, 214, 90)),
        (f"{w}x{h} · {spec.fmt} q{spec.quality} · creativity {spec.creativity}", mid, _WHITE),
    ]
    if spec.refs or spec.moodboards:
        extra = f" · {spec.moodboards} moodboard(s)" if spec.moodboards else ""
        lines.append((f"{len(spec.refs)} reference image(s){extra}", mid, (200, 200, 210)))
    rows = (len(spec.refs) + 4) // 5
    chips_h = rows * (int(mid * 1.6) + mid // 3)
    text_h = sum(int(size * 1.2) for _, size, _ in lines)
    panel_h = margin + prompt_mask.height + margin // 2 + text_h + chips_h + margin
    top = max(margin * 3, h - panel_h)
    draw.rectangle((0, top, w, h), fill=_PANEL)
    draw.line((0, top, w, top), fill=_CREATIVITY_COLOUR.get(spec.creativity, _WHITE), width=3)
    y = top + margin
    card.paste(_WHITE, (margin, y, margin + prompt_mask.width, y + prompt_mask.height), prompt_mask)
    y += prompt_mask.height + margin // 2
    for text, size, colour in lines:
        y += _paste_text(card, (margin, y), text, size, colour, inner) + int(size * 0.2)
    if spec.refs:
        _ref_chips(card, spec, margin, y, inner, mid)
    return card


def render(spec: RenderSpec) -> bytes:
    """Encode the card of `spec` in its outputFormat and outputQuality."""
    card = draw_card(spec)
    out = io.BytesIO()
    pil_format = FORMATS[spec.fmt][0]
    if pil_format == "JPEG":
        card.save(out, "JPEG", quality=spec.quality)
    elif pil_format == "PNG":
        card.save(out, "PNG", compress_level=1)
    else:
        card.save(out, "WEBP", quality=spec.quality, method=0)
    return out.getvalue()


class ImageCache:
    """Thread-safe LRU of encoded images keyed by spec, bounded by total bytes; renders on miss."""

    def __init__(self, max_bytes: int = 128 * 1024 * 1024) -> None:
        self._max = max_bytes
        self._size = 0
        self._items: OrderedDict[RenderSpec, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: RenderSpec) -> bytes:
        """The encoded bytes of `spec`, rendered now if not cached."""
        with self._lock:
            data = self._items.get(spec)
            if data is not None:
                self._items.move_to_end(spec)
                return data
        data = render(spec)
        with self._lock:
            if spec not in self._items:
                self._items[spec] = data
                self._size += len(data)
                while self._size > self._max and len(self._items) > 1:
                    _, old = self._items.popitem(last=False)
                    self._size -= len(old)
        return data


def average_colour(image: Image.Image) -> RGB:
    """The mean colour of an image (for reference chips)."""
    rgb = image.convert("RGB")
    rgb.thumbnail((64, 64))
    r, g, b = rgb.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))  # type: ignore[misc]
    return (int(r), int(g), int(b))
