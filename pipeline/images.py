"""Image bytes helpers: the recipe in the file's metadata (no re-encode), hashes, thumbnails.

A recipe is compact JSON (`cell_id`, `request` as sent without the key, `seed`, `result_index`,
`tool: "krea-sweep"`, anything else the caller adds) stored where each format keeps text:

    PNG   an iTXt chunk, keyword `krea-sweep`, right after IHDR (UTF-8, uncompressed)
    JPEG  COM segments whose payload starts with b"krea-sweep\\0" (split at 65 522 bytes), placed
          after SOI and the leading APPn segments (JFIF/Exif stay first)
    WEBP  an `XMP ` chunk holding a minimal XMP packet with the JSON in <krea:recipe>; a simple
          (VP8/VP8L) file is first turned into the extended (VP8X) layout. If the file already
          has a foreign XMP chunk, the packet goes in a private `KSWP` chunk instead.

Beside it, a short human-readable recipe (prompt, then `Seed: …, Size: …, Model: …`) goes into
the standard fields image browsers show: XMP `dc:description` (PNG iTXt `XML:com.adobe.xmp`,
JPEG APP1, WEBP's XMP packet) and, for PNG, an iTXt `parameters` text in the style of Stable
Diffusion web UIs. Each is marked as krea-sweep's own (`Tool: krea-sweep`, the `krea` XMP
namespace) so `strip_recipe` removes only what was added.

Only container bytes change: the compressed pixel data is copied as is, and `strip_recipe`
removes exactly what `embed_recipe` added, so `strip_recipe(embed_recipe(x)) == x` byte for byte.
The manifest's `image_sha256` is the hash of the bytes as the API delivered them, which is
`sha256_hex(strip_recipe(file bytes))` for an image written by the runner.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import stat
import struct
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, unescape

from PIL import Image

from pipeline import models
from pipeline.canonical import canonical_json
from pipeline.rundir import IMAGES_DIR

TOOL = "krea-sweep"
KEYWORD = b"krea-sweep"

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_JPEG_PREFIX = KEYWORD + b"\x00"
_JPEG_MAX_PAYLOAD = 65533
_JPEG_CHUNK = _JPEG_MAX_PAYLOAD - len(_JPEG_PREFIX)
_WEBP_PRIVATE = b"KSWP"
_XMP_NS = "https://github.com/krea-sweep/ns/1.0/"
_DC_NS = "http://purl.org/dc/elements/1.1/"
_OUR_XMP = f'xmlns:krea="{_XMP_NS}"'.encode()  # marks an XMP packet as krea-sweep's own
_OUR_PARAMS = f"Tool: {TOOL}".encode()  # marks a PNG `parameters` text as krea-sweep's own
_PNG_XMP_KEY = b"XML:com.adobe.xmp"
_PNG_PARAMS_KEY = b"parameters"
_JPEG_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_RE = re.compile(
    rb'<krea:recipe( krea:converted="(?P<conv>[01])")?>(?P<body>.*?)</krea:recipe>', re.S
)
_VP8X_ALPHA = 0x10
_VP8X_XMP = 0x04
# Chunks that come before XMP in the extended WebP layout (RIFF container spec).
_WEBP_BEFORE_XMP = {b"VP8X", b"ICCP", b"ANIM", b"ANMF", b"ALPH", b"VP8 ", b"VP8L", b"EXIF"}


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def image_relpath(cell_id: str, result_index: int, ext: str) -> str:
    """Path of an image inside a run dir, named from its cell id only (never from prompt text)."""
    return f"{IMAGES_DIR}/{cell_id}-{int(result_index)}.{normalize_ext(ext)}"


def normalize_ext(ext: str) -> str:
    """`JPEG`/`.jpg`/`jpeg` -> `jpg`; `PNG` -> `png`; `WEBP` -> `webp`."""
    e = ext.lower().lstrip(".")
    return "jpg" if e == "jpeg" else e


def _umask() -> int:
    """The process umask, read without changing it where the system tells it (Linux)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: read it by setting it (once, at import)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file: the user's umask honoured


def write_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write `data` to `path` via a temp file in the same dir and os.replace (all or nothing).

    The file gets the mode a plain `open()` would give it (0666 less the umask), not the temp
    file's private 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def make_recipe(
    cell_id: str, request: Mapping[str, Any], seed: int | None, result_index: int, **extra: Any
) -> dict[str, Any]:
    """The recipe dict for one image (refuses a request that carries an API key)."""
    if "apiKey" in request:
        raise ValueError("a recipe must not contain the API key")
    return {
        "tool": TOOL,
        "cell_id": cell_id,
        "result_index": int(result_index),
        "seed": seed,
        "request": dict(request),
        **extra,
    }


def detect_format(data: bytes) -> str | None:
    """`png` | `jpg` | `webp` from the magic bytes, else None."""
    if data.startswith(_PNG_SIG):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def embed_recipe(data: bytes, ext: str, recipe: Mapping[str, Any]) -> bytes:
    """`data` with `recipe` in its metadata (pixels untouched; replaces an older recipe)."""
    fmt = detect_format(data)
    if fmt is None:
        raise ValueError(f"not a PNG, JPEG or WEBP image (ext {ext!r})")
    if "apiKey" in (recipe.get("request") or {}):
        raise ValueError("a recipe must not contain the API key")
    payload = {"tool": TOOL, **recipe}
    text = canonical_json(payload)
    summary = describe(payload)
    base = strip_recipe(data)
    if fmt == "png":
        return _png_embed(base, text.encode("utf-8"), summary)
    if fmt == "jpg":
        return _jpeg_embed(base, text.encode("utf-8"), summary)
    return _webp_embed(base, text, summary)


def describe(recipe: Mapping[str, Any]) -> str:
    """The short human-readable recipe: the prompt, then one line of `Key: value` settings."""
    request = recipe.get("request") or {}
    prompt = str(request.get("positivePrompt") or "")
    parts = []
    if recipe.get("seed") is not None:
        parts.append(f"Seed: {recipe['seed']}")
    if request.get("width") and request.get("height"):
        parts.append(f"Size: {request['width']}x{request['height']}")
    if request.get("model"):
        parts.append(f"Model: {request['model']}")
    for column in models.extra_columns():  # the models' own fields, e.g. `Creativity: high`
        value = column.read(request)
        if value:
            parts.append(f"{column.label}: {value}")
    refs = (request.get("inputs") or {}).get("referenceImages") or []
    strengths = [str(r.get("strength")) for r in refs if isinstance(r, dict) and "strength" in r]
    if strengths:
        parts.append(f"Reference strengths: {' '.join(strengths)}")
    if recipe.get("cell_id"):
        parts.append(f"Cell: {recipe['cell_id']}")
    parts.append(f"Tool: {TOOL}")
    return f"{prompt}\n{', '.join(parts)}"


def _xmp_description(summary: str) -> str:
    """An rdf:Description body part holding `summary` as dc:description."""
    return (
        '<dc:description><rdf:Alt><rdf:li xml:lang="x-default">'
        f"{escape(summary)}</rdf:li></rdf:Alt></dc:description>"
    )


def _xmp_wrap(body: str) -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:dc="{_DC_NS}" xmlns:krea="{_XMP_NS}">'
        f"{body}</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    ).encode()


def read_recipe(source: bytes | str | os.PathLike[str]) -> dict[str, Any] | None:
    """The embedded recipe of an image file or its bytes, or None when it has none."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    fmt = detect_format(data)
    raw: bytes | None
    if fmt == "png":
        raw = _png_find(data)
    elif fmt == "jpg":
        raw = _jpeg_find(data)
    elif fmt == "webp":
        raw = _webp_find(data)
    else:
        return None
    if raw is None:
        return None
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def strip_recipe(data: bytes) -> bytes:
    """`data` without an embedded recipe: exactly the bytes `embed_recipe` was given."""
    fmt = detect_format(data)
    if fmt == "png":
        return _png_strip(data)
    if fmt == "jpg":
        return _jpeg_strip(data)
    if fmt == "webp":
        return _webp_strip(data)
    return data


def thumbnail(data: bytes, max_side: int) -> Image.Image:
    """A decoded copy of the image no larger than `max_side` on either side (RGB or RGBA)."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (max_side, max_side))
        has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
        out = im.convert("RGBA" if has_alpha else "RGB")
    out.thumbnail((max_side, max_side))
    return out


# --- PNG -------------------------------------------------------------------------------------


def _png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, start, end) of every chunk; end is past the CRC."""
    out: list[tuple[bytes, int, int]] = []
    pos = len(_PNG_SIG)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise ValueError("truncated PNG chunk")
        out.append((ctype, pos, end))
        pos = end
        if ctype == b"IEND":
            break
    return out


def _png_is_ours(data: bytes, start: int, end: int) -> bool:
    return data[start + 4 : start + 8] == b"iTXt" and data[start + 8 :].startswith(KEYWORD + b"\0")


def _png_is_our_extra(data: bytes, start: int, end: int) -> bool:
    """Our `parameters` or XMP iTXt chunk (the human-readable recipe)."""
    if data[start + 4 : start + 8] != b"iTXt":
        return False
    body = data[start + 8 : end - 4]
    if body.startswith(_PNG_PARAMS_KEY + b"\0"):
        return body.endswith(_OUR_PARAMS)
    return body.startswith(_PNG_XMP_KEY + b"\0") and _OUR_XMP in body


def _png_itxt(keyword: bytes, text: bytes) -> bytes:
    body = keyword + b"\0\0\0\0\0" + text  # keyword, no compression, method 0, no lang/transl.
    chunk = struct.pack(">I", len(body)) + b"iTXt" + body
    return chunk + struct.pack(">I", zlib.crc32(b"iTXt" + body) & 0xFFFFFFFF)


def _png_embed(data: bytes, text: bytes, summary: str) -> bytes:
    chunks = _png_chunks(data)
    if not chunks or chunks[0][0] != b"IHDR":
        raise ValueError("PNG without IHDR")
    added = (
        _png_itxt(KEYWORD, text)
        + _png_itxt(_PNG_PARAMS_KEY, summary.encode("utf-8"))
        + _png_itxt(_PNG_XMP_KEY, _xmp_wrap(_xmp_description(summary)))
    )
    ihdr_end = chunks[0][2]
    return data[:ihdr_end] + added + data[ihdr_end:]


def _png_find(data: bytes) -> bytes | None:
    for ctype, start, end in _png_chunks(data):
        if ctype == b"iTXt" and _png_is_ours(data, start, end):
            body = data[start + 8 : end - 4]
            # keyword\0 flag method lang\0 translated\0 text
            rest = body[len(KEYWORD) + 3 :]
            _lang, _, rest = rest.partition(b"\0")
            _transl, _, text = rest.partition(b"\0")
            if body[len(KEYWORD) + 1] != 0:
                return zlib.decompress(text)
            return text
    return None


def _png_strip(data: bytes) -> bytes:
    parts = [data[: len(_PNG_SIG)]]
    chunks = _png_chunks(data)
    for ctype, start, end in chunks:
        ours = ctype == b"iTXt" and (
            _png_is_ours(data, start, end) or _png_is_our_extra(data, start, end)
        )
        if not ours:
            parts.append(data[start:end])
    tail = chunks[-1][2] if chunks else len(_PNG_SIG)
    parts.append(data[tail:])
    return b"".join(parts)


# --- JPEG ------------------------------------------------------------------------------------


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment after SOI up to (not including) SOS/EOI."""
    out: list[tuple[int, int, int]] = []
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError("corrupt JPEG: marker expected")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xDA, 0xD9) or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise ValueError("truncated JPEG segment")
        out.append((marker, pos, end))
        pos = end
    return out


def _jpeg_is_ours(data: bytes, marker: int, start: int, end: int | None = None) -> bool:
    if marker == 0xFE:
        return data[start + 4 :].startswith(_JPEG_PREFIX)
    if marker == 0xE1 and end is not None:  # our XMP packet (the human-readable recipe)
        body = data[start + 4 : end]
        return body.startswith(_JPEG_XMP_HEADER) and _OUR_XMP in body
    return False


def _jpeg_embed(data: bytes, text: bytes, summary: str) -> bytes:
    insert_at = 2
    for marker, _start, end in _jpeg_segments(data):
        if 0xE0 <= marker <= 0xEF:
            insert_at = end
        else:
            break
    segs = []
    for i in range(0, max(len(text), 1), _JPEG_CHUNK):
        payload = _JPEG_PREFIX + text[i : i + _JPEG_CHUNK]
        segs.append(b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload)
    xmp = _JPEG_XMP_HEADER + _xmp_wrap(_xmp_description(summary[:20000]))
    if len(xmp) + 2 <= 0xFFFF:
        segs.insert(0, b"\xff\xe1" + struct.pack(">H", len(xmp) + 2) + xmp)
    return data[:insert_at] + b"".join(segs) + data[insert_at:]


def _jpeg_find(data: bytes) -> bytes | None:
    parts = [
        data[start + 4 + len(_JPEG_PREFIX) : end]
        for marker, start, end in _jpeg_segments(data)
        if _jpeg_is_ours(data, marker, start)
    ]
    return b"".join(parts) if parts else None


def _jpeg_strip(data: bytes) -> bytes:
    segs = _jpeg_segments(data)
    ours = [(start, end) for marker, start, end in segs if _jpeg_is_ours(data, marker, start, end)]
    if not ours:
        return data
    parts, pos = [], 0
    for start, end in ours:
        parts.append(data[pos:start])
        pos = end
    parts.append(data[pos:])
    return b"".join(parts)


# --- WEBP ------------------------------------------------------------------------------------


def _webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(fourcc, payload) of each chunk in the RIFF body."""
    out: list[tuple[bytes, bytes]] = []
    pos = 12
    end = min(len(data), 8 + struct.unpack("<I", data[4:8])[0])
    while pos + 8 <= end:
        fourcc = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        if pos + 8 + size > len(data):
            raise ValueError("truncated WEBP chunk")
        out.append((fourcc, data[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return out


def _webp_pack(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(
        fourcc + struct.pack("<I", len(p)) + p + (b"\0" if len(p) & 1 else b"")
        for fourcc, p in chunks
    )
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def _webp_size(fourcc: bytes, payload: bytes) -> tuple[int, int, bool]:
    """(width, height, has_alpha) of a simple-format bitstream."""
    if fourcc == b"VP8 ":
        if payload[3:6] != b"\x9d\x01\x2a":
            raise ValueError("bad VP8 start code")
        w, h = struct.unpack("<HH", payload[6:10])
        return w & 0x3FFF, h & 0x3FFF, False
    if payload[:1] != b"\x2f":
        raise ValueError("bad VP8L signature")
    (bits,) = struct.unpack("<I", payload[1:5])
    return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool((bits >> 28) & 1)


def _xmp_packet(text: str, converted: bool, summary: str) -> bytes:
    return _xmp_wrap(
        _xmp_description(summary)
        + f'<krea:recipe krea:converted="{int(converted)}">{escape(text)}</krea:recipe>'
    )


def _xmp_match(payload: bytes) -> re.Match[bytes] | None:
    return _XMP_RE.search(payload) if b"<krea:recipe" in payload else None


def _webp_embed(data: bytes, text: str, summary: str) -> bytes:
    chunks = _webp_chunks(data)
    if not chunks:
        raise ValueError("empty WEBP")
    converted = chunks[0][0] != b"VP8X"
    if converted:
        if chunks[0][0] not in (b"VP8 ", b"VP8L"):
            raise ValueError(f"unexpected first WEBP chunk {chunks[0][0]!r}")
        w, h, alpha = _webp_size(*chunks[0])
        flags = _VP8X_ALPHA if alpha else 0
        vp8x = (
            bytes([flags, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
        )
        chunks.insert(0, (b"VP8X", vp8x))
    packet = _xmp_packet(text, converted, summary)
    flags = chunks[0][1][0]
    if any(fourcc == b"XMP " for fourcc, _ in chunks):
        new = (_WEBP_PRIVATE, packet)  # keep the foreign XMP untouched
    else:
        new = (b"XMP ", packet)
        chunks[0] = (b"VP8X", bytes([flags | _VP8X_XMP]) + chunks[0][1][1:])
    at = max(i for i, (fourcc, _) in enumerate(chunks) if fourcc in _WEBP_BEFORE_XMP) + 1
    chunks.insert(at, new)
    return _webp_pack(chunks)


def _webp_ours(chunks: list[tuple[bytes, bytes]]) -> tuple[int, re.Match[bytes]] | None:
    for i, (fourcc, payload) in enumerate(chunks):
        if fourcc in (b"XMP ", _WEBP_PRIVATE):
            m = _xmp_match(payload)
            if m is not None:
                return i, m
    return None


def _webp_find(data: bytes) -> bytes | None:
    found = _webp_ours(_webp_chunks(data))
    if found is None:
        return None
    return unescape(found[1].group("body").decode("utf-8")).encode("utf-8")


def _webp_strip(data: bytes) -> bytes:
    chunks = _webp_chunks(data)
    found = _webp_ours(chunks)
    if found is None:
        return data
    i, m = found
    fourcc = chunks[i][0]
    del chunks[i]
    if fourcc == b"XMP " and chunks and chunks[0][0] == b"VP8X":
        vp8x = chunks[0][1]
        chunks[0] = (b"VP8X", bytes([vp8x[0] & ~_VP8X_XMP & 0xFF]) + vp8x[1:])
    if m.group("conv") == b"1" and chunks and chunks[0][0] == b"VP8X":
        del chunks[0]
    return _webp_pack(chunks)


# --------------------------------------------------------------------------- reference inputs

MAX_REFERENCE_BYTES = 50 * 1024 * 1024  # a local reference image larger than this is refused
_REFERENCE_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
}
_UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\Z")
_DATA_URI = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,[A-Za-z0-9+/\s]+={0,2}\s*\Z", re.S)
_BASE64 = re.compile(r"[A-Za-z0-9+/\s]+={0,2}\s*\Z")
_URL = re.compile(r"https?://[^\s/?#@]+(?:[/?#]\S*)?\Z", re.I)


def image_signature(head: bytes) -> str | None:
    """The image format its first bytes announce (PNG, JPEG, WEBP, GIF, BMP), else None."""
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((name for sig, name in _REFERENCE_SIGNATURES.items() if head.startswith(sig)), None)


def read_reference(
    path: str | os.PathLike[str], limit: int = MAX_REFERENCE_BYTES, *, image: bool = True
) -> bytes:
    """A local reference image's bytes, read safely; ValueError says why it cannot be one.

    The file is opened without blocking and checked with fstat before any read, so a FIFO, a
    device (a symlink to /dev/zero) or a directory is refused at once; the read is bounded.
    `image=False` skips the check that the bytes start like an image.
    """
    try:
        mode = os.stat(path).st_mode  # a FIFO or a device is never opened
        if not stat.S_ISREG(mode):
            raise ValueError(f"is not a regular file ({_file_kind(mode)})")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from exc
    try:
        st = os.fstat(fd)  # the file opened is still the one checked
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"is not a regular file ({_file_kind(st.st_mode)})")
        if st.st_size == 0:
            raise ValueError("is empty (0 bytes)")
        if st.st_size > limit:
            raise ValueError(f"is {st.st_size:,} bytes; at most {limit:,} are sent")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from exc
    finally:
        os.close(fd)
    if not data or len(data) > limit:
        raise ValueError("changed size while it was read")
    if image and image_signature(data[:16]) is None:
        raise ValueError(
            "is not an image (its bytes start like no PNG, JPEG, WEBP, GIF or BMP file)"
        )
    return data


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def image_input_problem(value: str) -> str | None:
    """Why a string image input (not a local file) cannot be sent, or None when it can.

    Allowed: an http(s) URL, a Runware image UUID, a data URI of an image in base64, or base64.
    """
    if _UUID_TEXT.match(value) or _URL.match(value):
        return None
    if value[:5].lower() == "data:":
        if not _DATA_URI.match(value):
            return "is a data URI but not data:image/…;base64,…"
        return _base64_image_problem(value.partition(",")[2])
    compact = "".join(value.split())
    if len(compact) >= 16 and len(compact) % 4 == 0 and _BASE64.match(value):
        return _base64_image_problem(compact)
    return (
        "is not an image input; allowed: an https/http URL, a Runware image UUID, a data URI "
        "(data:image/…;base64,…), base64, or a local image file (.png .jpg .jpeg .webp .bmp .gif)"
    )


def _base64_image_problem(text: str) -> str | None:
    """None when base64 text starts with an image's bytes; else why not."""
    head = "".join(text[:64].split())[:32]
    try:
        data = base64.b64decode(head[: len(head) // 4 * 4], validate=True)
    except ValueError:
        return "is not valid base64"
    if image_signature(data) is None:
        return "is base64 of something that is not a PNG, JPEG, WEBP, GIF or BMP image"
    return None
