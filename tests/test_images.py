"""Recipes embedded in PNG / JPEG / WEBP metadata without touching the pixel data."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipeline import images


def _pattern(mode: str, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A deterministic image with gradients (and partial transparency for RGBA)."""
    im = Image.new(mode, size)
    w, h = size
    px = [
        (x * 4 % 256, y * 5 % 256, (x * y) % 256, (x + y) * 3 % 256)[: len(mode)]
        for y in range(h)
        for x in range(w)
    ]
    im.putdata(px)
    return im


def _encode(mode: str, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    _pattern(mode).save(buf, fmt, **kw)
    return buf.getvalue()


CASES: list[tuple[str, str, str, dict[str, Any]]] = [
    # id, mode, format, save options
    ("png-rgb", "RGB", "PNG", {}),
    ("png-rgba", "RGBA", "PNG", {}),
    ("jpg", "RGB", "JPEG", {"quality": 90}),
    ("jpg-exif", "RGB", "JPEG", {"exif": Image.Exif()}),
    ("webp-lossy", "RGB", "WEBP", {"quality": 80}),
    ("webp-lossless", "RGB", "WEBP", {"lossless": True}),
    ("webp-rgba-lossy", "RGBA", "WEBP", {"quality": 80}),
    ("webp-rgba-lossless", "RGBA", "WEBP", {"lossless": True}),
]
EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


def _recipe(prompt: str = "a lighthouse on a cliff at dusk") -> dict[str, Any]:
    request = {
        "taskType": "imageInference",
        "taskUUID": "7f3ebe3e-5ce4-4c5c-9a6e-0d8a8b6a1f00",
        "model": "krea:krea@2-large",
        "positivePrompt": prompt,
        "width": 1024,
        "height": 1024,
        "seed": 9223372036854775807,
        "settings": {"creativity": "medium"},
    }
    return images.make_recipe("0123456789abcdef0123", request, 9223372036854775807, 2)


def _pixels(data: bytes) -> tuple[str, tuple[int, int], bytes]:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.mode, im.size, im.tobytes()


@pytest.mark.parametrize(("mode", "fmt", "kw"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_round_trip_keeps_pixels(mode: str, fmt: str, kw: dict[str, Any]) -> None:
    original = _encode(mode, fmt, **kw)
    recipe = _recipe()
    embedded = images.embed_recipe(original, EXT[fmt], recipe)

    assert embedded != original
    assert images.read_recipe(embedded) == recipe
    assert _pixels(embedded) == _pixels(original)
    assert images.strip_recipe(embedded) == original
    assert images.read_recipe(original) is None
    with Image.open(io.BytesIO(embedded)) as im:
        assert im.format == fmt
        im.verify()


@pytest.mark.parametrize(("mode", "fmt", "kw"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_non_ascii_and_re_embed_replaces(mode: str, fmt: str, kw: dict[str, Any]) -> None:
    original = _encode(mode, fmt, **kw)
    first = images.embed_recipe(original, EXT[fmt], _recipe("first"))
    recipe = _recipe("phare au crépuscule, 灯台, «film grain» & <tilt-shift> 🌅")
    second = images.embed_recipe(first, EXT[fmt], recipe)
    assert images.read_recipe(second) == recipe
    assert images.strip_recipe(second) == original
    assert _pixels(second) == _pixels(original)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_large_request(fmt: str) -> None:
    blob = base64.b64encode(os.urandom(75_000)).decode()  # 100 KB of base64
    assert len(blob) == 100_000
    recipe = _recipe()
    recipe["request"]["inputs"] = {"referenceImages": [{"image": blob, "strength": 0.7}]}
    original = _encode("RGB", fmt)
    embedded = images.embed_recipe(original, EXT[fmt], recipe)
    assert images.read_recipe(embedded) == recipe
    assert _pixels(embedded) == _pixels(original)
    assert images.strip_recipe(embedded) == original
    if fmt == "JPEG":  # split over several COM segments of at most 65535 bytes
        assert embedded.count(b"\xff\xfe") >= 2


def test_webp_layout_after_embed() -> None:
    original = _encode("RGB", "WEBP")
    assert original[12:16] == b"VP8 "
    embedded = images.embed_recipe(original, "webp", _recipe())
    assert embedded[12:16] == b"VP8X"
    assert embedded[20] & 0x04  # XMP flag
    assert int.from_bytes(embedded[4:8], "little") == len(embedded) - 8
    with Image.open(io.BytesIO(embedded)) as im:
        assert im.size == (64, 48)
        assert b"krea:recipe" in im.info["xmp"]


def test_webp_with_foreign_xmp_keeps_it() -> None:
    buf = io.BytesIO()
    _pattern("RGB").save(buf, "WEBP", xmp=b"<x:xmpmeta>theirs</x:xmpmeta>")
    original = buf.getvalue()
    embedded = images.embed_recipe(original, "webp", _recipe())
    assert images.read_recipe(embedded) == _recipe()
    assert images.strip_recipe(embedded) == original
    with Image.open(io.BytesIO(embedded)) as im:
        assert im.info["xmp"] == b"<x:xmpmeta>theirs</x:xmpmeta>"


def test_png_text_visible_to_pillow() -> None:
    embedded = images.embed_recipe(_encode("RGB", "PNG"), "png", _recipe())
    with Image.open(io.BytesIO(embedded)) as im:
        im.load()
        assert '"tool":"krea-sweep"' in im.info["krea-sweep"]


def test_read_recipe_from_path_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    images.write_atomic(path, images.embed_recipe(_encode("RGB", "PNG"), "png", _recipe()))
    assert images.read_recipe(path) == _recipe()
    assert images.read_recipe(str(path)) == _recipe()
    assert images.read_recipe(b"not an image") is None
    with pytest.raises(ValueError):
        images.embed_recipe(b"not an image", "png", _recipe())


def test_recipe_refuses_api_key() -> None:
    with pytest.raises(ValueError):
        images.make_recipe("ab", {"apiKey": "secret"}, 1, 0)
    with pytest.raises(ValueError):
        images.embed_recipe(_encode("RGB", "PNG"), "png", {"request": {"apiKey": "secret"}})


@pytest.mark.parametrize(
    ("ext", "expected"),
    [("jpg", "jpg"), ("JPEG", "jpg"), (".png", "png"), ("WEBP", "webp")],
)
def test_image_relpath(ext: str, expected: str) -> None:
    assert images.image_relpath("abc123", 3, ext) == f"images/abc123-3.{expected}"


def test_sha256_hex() -> None:
    assert images.sha256_hex(b"") == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


@pytest.mark.parametrize(("mode", "fmt"), [("RGB", "JPEG"), ("RGBA", "PNG"), ("RGB", "WEBP")])
def test_thumbnail(mode: str, fmt: str) -> None:
    thumb = images.thumbnail(_encode(mode, fmt), 16)
    assert max(thumb.size) == 16
    assert thumb.mode == ("RGBA" if mode == "RGBA" else "RGB")


def test_write_atomic_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.bin"
    images.write_atomic(target, b"one")
    images.write_atomic(target, b"two", fsync=False)
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.bin"]


# --- the human-readable recipe in standard fields, and file modes -------------------------------


def _xmp_of(im: Image.Image) -> str:
    raw = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp") or b""
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


@pytest.mark.parametrize(("case_id", "mode", "fmt", "opts"), CASES, ids=[c[0] for c in CASES])
def test_human_readable_recipe_is_in_xmp_dc_description(
    case_id: str, mode: str, fmt: str, opts: dict[str, Any]
) -> None:
    original = _encode(mode, fmt, **opts)
    recipe = {
        "cell_id": "0123456789abcdef0123",
        "seed": 42,
        "result_index": 0,
        "request": {**_recipe("a fox & a <hound>")["request"], "seed": 42},
    }
    out = images.embed_recipe(original, EXT[fmt], recipe)
    with Image.open(io.BytesIO(out)) as im:  # what an image browser's reader sees
        xmp = _xmp_of(im)
    assert '<dc:description><rdf:Alt><rdf:li xml:lang="x-default">' in xmp, case_id
    assert (
        "a fox &amp; a &lt;hound&gt;\nSeed: 42, Size: 1024x1024, Model: krea:krea@2-large, "
        "Creativity: medium, Cell: 0123456789abcdef0123, Tool: krea-sweep" in xmp
    )
    assert images.strip_recipe(out) == original  # the exact bytes come back


def test_png_carries_a_parameters_text_like_image_browsers_read() -> None:
    original = _encode("RGB", "PNG")
    recipe = _recipe("a lighthouse, film grain")
    out = images.embed_recipe(original, "png", {**recipe, "seed": 7})
    with Image.open(io.BytesIO(out)) as im:
        params = im.info["parameters"]
    first, second = params.split("\n")
    assert first == "a lighthouse, film grain"
    assert second.startswith("Seed: 7, Size: 1024x1024, Model: krea:krea@2-large")
    assert second.endswith("Tool: krea-sweep")


def test_a_foreign_parameters_text_and_xmp_are_kept() -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", "someone else's recipe")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>theirs</x:xmpmeta>")
    buf = io.BytesIO()
    _pattern("RGB").save(buf, "PNG", pnginfo=info)
    original = buf.getvalue()
    out = images.embed_recipe(original, "png", _recipe())
    assert images.strip_recipe(out) == original
    recipe = images.read_recipe(out)
    assert recipe is not None
    assert recipe["request"]["positivePrompt"] == "a lighthouse on a cliff at dusk"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    import subprocess
    import sys

    from conftest import cli_env

    script = (
        "import os, sys; from pathlib import Path; os.umask(int(sys.argv[1], 8));"
        "from pipeline.images import write_atomic; write_atomic(Path(sys.argv[2]), b'x')"
    )
    target = tmp_path / "out" / "f.bin"
    subprocess.run(
        [sys.executable, "-c", script, oct(umask)[2:], str(target)], check=True, env=cli_env()
    )
    assert target.stat().st_mode & 0o777 == mode
