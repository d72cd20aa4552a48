"""User-image preprocessing: every input kind lands on the Omniglot training distribution."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from benchmarks.bench_preprocess import header_only_png
from engine.data.omniglot import decode_drawing, load_split
from engine.data.preprocess import (
    MAX_PIXELS,
    TARGET_CENTRE,
    TARGET_MAX_SIDE,
    ImagePreprocessError,
    ImageTooLargeError,
    NoInkError,
    UnreadableImageError,
    preprocess_frame,
    preprocess_image,
    preprocess_many,
    stroke_width,
)

# --------------------------------------------------------------------------- synthetic images

# Polylines in unit coordinates; drawn into a square box so every rendering shares a shape.
GLYPHS: dict[str, list[list[tuple[float, float]]]] = {
    "A": [[(0.2, 0.95), (0.5, 0.05), (0.8, 0.95)], [(0.32, 0.6), (0.68, 0.6)]],
    "loop": [[(0.2, 0.9), (0.2, 0.3), (0.45, 0.05), (0.7, 0.3), (0.7, 0.5), (0.4, 0.55), (0.2, 0.45)],
             [(0.8, 0.85), (0.95, 0.8)]],
    "T": [[(0.05, 0.1), (0.95, 0.1)], [(0.5, 0.1), (0.5, 0.95)]],
}
Box = tuple[float, float, float]  # left, top, side (pixels)


def draw_glyph(glyph: str = "A", size: tuple[int, int] = (280, 280), width: int = 15,
               fg: int | tuple[int, ...] = 0, bg: int | tuple[int, ...] = 255, mode: str = "L",
               box: Box | None = None) -> Image.Image:
    """Render a glyph like a canvas stroke: round caps/joins, ``width`` px pen, square box."""
    im = Image.new(mode, size, bg)
    d = ImageDraw.Draw(im)
    if box is None:
        side = 0.8 * min(size)
        box = ((size[0] - side) / 2, (size[1] - side) / 2, side)
    left, top, side = box
    for line in GLYPHS[glyph]:
        pts = [(left + side * x, top + side * y) for x, y in line]
        d.line(pts, fill=fg, width=width, joint="curve")
        r = width / 2
        for x, y in (pts[0], pts[-1]):
            d.ellipse((x - r, y - r, x + r, y + r), fill=fg)
    return im


def alpha_canvas(glyph: str = "A", colour: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Strokes of one colour on a fully transparent canvas (what a web canvas returns)."""
    alpha = draw_glyph(glyph, fg=255, bg=0)
    rgba = Image.new("RGBA", alpha.size, colour + (0,))
    rgba.putalpha(alpha)
    return rgba


def png_bytes(im: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def jpeg_bytes(im: Image.Image, quality: int = 85, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality, **kwargs)
    return buf.getvalue()


def photo_bytes(glyph: str = "A", size: tuple[int, int] = (1600, 1200), seed: int = 0, quality: int = 70,
                shadow: bool = False, pencil: bool = False) -> bytes:
    """A phone-photo look: grey paper, strong lighting gradient, optional hard shadow,
    slightly blurred dark-grey ink, sensor noise, a colour cast and JPEG compression."""
    rng = np.random.default_rng(seed)
    w, h = size
    side = 0.5 * min(size)
    ink = draw_glyph(glyph, size=size, width=max(4, int(side / 35)), fg=255, bg=0,
                     box=((w - side) / 2, (h - side) / 2, side))
    m = np.asarray(ink.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32) / 255.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(size)
    light = 0.5 + 0.45 * xx + 0.05 * np.sin(6 * yy)
    if shadow:  # a hard-edged shadow (the phone's) across a corner of the sheet
        light = light * np.where(yy + 0.5 * xx > 0.75, 0.6, 1.0)
    grey = light * (0.9 * (1 - m) + (0.5 if pencil else 0.2) * m) + rng.normal(0, 0.03, m.shape)
    rgb = np.clip(np.stack([grey * 1.0, grey * 0.96, grey * 0.88], axis=-1) * 255, 0, 255).astype(np.uint8)
    return jpeg_bytes(Image.fromarray(rgb), quality=quality)



def _palette(transparent: bool) -> Image.Image | bytes:
    p = draw_glyph(fg=1, bg=0, mode="P")
    if not transparent:
        p.putpalette([250, 250, 250, 10, 10, 10] + [0] * 762)
        return p
    p.putpalette([0, 0, 0, 30, 160, 30] + [0] * 762)
    return png_bytes(p, transparency=0)


def _exif_rotated_jpeg() -> bytes:
    """The glyph stored rotated, with EXIF orientation 6 saying 'rotate 90 CW to display'."""
    upright = draw_glyph().convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(stored, quality=95, exif=exif.tobytes())


def _huge() -> Image.Image:
    return draw_glyph(size=(4000, 3000), width=110, box=(1000, 500, 2000))


# name -> (factory, tolerance of the mean |difference| to the clean-canvas reference)
KINDS: dict[str, tuple[Callable[[], object], float]] = {
    "canvas_black_on_white": (lambda: draw_glyph(), 0.0),
    "canvas_png_bytes": (lambda: png_bytes(draw_glyph()), 0.0),
    "canvas_rgb_array": (lambda: np.asarray(draw_glyph().convert("RGB")), 0.0),
    "white_on_transparent_rgba": (lambda: alpha_canvas(colour=(255, 255, 255)), 0.0),
    "white_on_transparent_png": (lambda: png_bytes(alpha_canvas(colour=(255, 255, 255))), 0.0),
    "black_on_transparent_array": (lambda: np.asarray(alpha_canvas(colour=(0, 0, 0))), 0.0),
    "coloured_on_transparent": (lambda: alpha_canvas(colour=(200, 40, 160)), 0.0),
    "red_on_white_rgba_opaque": (lambda: draw_glyph(fg=(220, 30, 30, 255), bg=(255, 255, 255, 255), mode="RGBA"), 0.0),
    "yellow_on_white": (lambda: draw_glyph(fg=(255, 225, 0), bg=(255, 255, 255), mode="RGB"), 0.0),
    "white_on_black": (lambda: draw_glyph(fg=255, bg=0), 0.0),
    "la_mode": (lambda: Image.merge("LA", (Image.new("L", (280, 280), 0), draw_glyph(fg=255, bg=0))), 0.0),
    "palette": (lambda: _palette(transparent=False), 0.0),
    "palette_transparent_png": (lambda: _palette(transparent=True), 0.0),
    "gray16_png": (lambda: png_bytes(Image.fromarray(np.asarray(draw_glyph(), dtype=np.uint16) * 257)), 0.0),
    "uint16_array": (lambda: np.asarray(draw_glyph(), dtype=np.uint16) * 257, 0.0),
    "one_bit": (lambda: draw_glyph().convert("1"), 0.0),
    "one_bit_png": (lambda: png_bytes(draw_glyph().convert("1")), 0.0),
    "float_array": (lambda: np.asarray(draw_glyph(), dtype=np.float64) / 255.0, 0.0),
    "float_F_image": (lambda: draw_glyph().convert("F"), 0.0),
    "bool_array": (lambda: np.asarray(draw_glyph()) > 127, 0.0),
    "jpeg_canvas": (lambda: jpeg_bytes(draw_glyph(), quality=60), 0.01),
    "exif_rotated_jpeg": (_exif_rotated_jpeg, 0.01),
    "huge_4000x3000": (_huge, 0.03),
    "huge_jpeg": (lambda: jpeg_bytes(_huge(), quality=80), 0.03),
    "tiny_24x24": (lambda: draw_glyph(size=(24, 24), width=2), 0.06),
    "tiny_12x12": (lambda: draw_glyph(size=(12, 12), width=1), 0.10),
    "photo": (lambda: photo_bytes(), 0.03),
    "photo_low_quality": (lambda: photo_bytes(seed=1, quality=30), 0.03),
    "photo_pencil": (lambda: photo_bytes(seed=2, pencil=True), 0.03),
    "photo_hard_shadow": (lambda: photo_bytes(seed=3, shadow=True), 0.03),
}


def _centre_of_mass(img: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    total = img.sum()
    return np.array([(ys * img).sum() / total, (xs * img).sum() / total])


def _check_output(out: np.ndarray) -> None:
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert float(out.max()) > 0.7  # ink is high ...
    assert float(out.mean()) < 0.25  # ... and the minority
    assert float(np.median(out)) == 0.0  # background is exactly 0, like the training data
    assert out[0].max() < 0.05 and out[-1].max() < 0.05 and out[:, 0].max() < 0.05 and out[:, -1].max() < 0.05
    com = _centre_of_mass(out)
    assert np.all(np.abs(com - 13.5) < 2.5), f"centre of mass {com} is off-centre"


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return preprocess_image(draw_glyph())


@pytest.mark.parametrize("kind", list(KINDS))
def test_image_kinds(kind: str, reference: np.ndarray) -> None:
    factory, tolerance = KINDS[kind]
    out = preprocess_image(factory())  # type: ignore[arg-type]
    _check_output(out)
    diff = float(np.abs(out - reference).mean())
    assert diff <= tolerance + 1e-6, f"{kind}: mean |diff| to the canvas reference = {diff:.3f}"


@pytest.mark.parametrize("glyph", list(GLYPHS))
def test_invariance_across_renderings(glyph: str) -> None:
    """Same glyph: black-on-white canvas, white-on-transparent canvas, phone photo."""
    canvas = preprocess_image(draw_glyph(glyph))
    outs = {
        "transparent": preprocess_image(alpha_canvas(glyph)),
        "photo": preprocess_image(photo_bytes(glyph, seed=7)),
        "thin_pen_large": preprocess_image(draw_glyph(glyph, size=(600, 600), width=4)),
        "thick_pen": preprocess_image(draw_glyph(glyph, size=(280, 280), width=30)),
        "small_in_corner": preprocess_image(draw_glyph(glyph, size=(280, 280), width=6, box=(10, 150, 90))),
    }
    for name, out in outs.items():
        diff = float(np.abs(out - canvas).mean())
        corr = float(np.corrcoef(out.ravel(), canvas.ravel())[0, 1])
        assert diff < 0.05 and corr > 0.8, f"{glyph}/{name}: diff {diff:.3f}, corr {corr:.3f}"


def test_frame_geometry_matches_omniglot() -> None:
    """Size, position and pen width in the 105 frame are Omniglot's typical values."""
    for glyph in GLYPHS:
        for image in (draw_glyph(glyph), draw_glyph(glyph, size=(500, 300), width=40), photo_bytes(glyph)):
            frame = preprocess_frame(image)
            assert frame.shape == (105, 105) and frame.dtype == bool
            ys, xs = np.nonzero(frame)
            side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
            assert abs(side - TARGET_MAX_SIDE) <= 2
            centre = ((ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2)
            assert np.allclose(centre, TARGET_CENTRE, atol=1.0)
            assert 3.8 <= stroke_width(frame) <= 5.2  # Omniglot: p5-p95 of 2*area/perimeter 3.85-4.87


def test_dots_stay_dots() -> None:
    """A lone dot becomes a pen dot (not a full-size blob); two dots stay two small dots."""
    one = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(one).ellipse((120, 120, 150, 150), fill=0)
    frame = preprocess_frame(one)
    ys, xs = np.nonzero(frame)
    assert frame.sum() < 40 and abs(ys.mean() - TARGET_CENTRE[0]) < 1 and abs(xs.mean() - TARGET_CENTRE[1]) < 1
    two = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(two).ellipse((60, 130, 80, 150), fill=0)
    ImageDraw.Draw(two).ellipse((200, 130, 220, 150), fill=0)
    frame = preprocess_frame(two)
    assert frame.sum() < 100
    assert frame[:, :40].any() and frame[:, 65:].any() and not frame[:, 40:65].any()


# --------------------------------------------------------------------------- vs the real data


@pytest.fixture(scope="module")
def real_stats(omniglot_dir: Path) -> dict[str, np.ndarray]:
    imgs = load_split(omniglot_dir, "evaluation").images.reshape(-1, 28, 28).astype(np.float32) / 255.0
    sample = imgs[np.random.default_rng(0).choice(len(imgs), 2000, replace=False)]
    return {
        "mass": np.percentile(sample.sum(axis=(1, 2)), [5, 50, 95]),
        "com": np.percentile(np.stack([_centre_of_mass(x) for x in sample]), [5, 50, 95], axis=0),
        "max": np.percentile(sample.max(axis=(1, 2)), [5, 50, 95]),
    }


def test_outputs_within_real_distribution(real_stats: dict[str, np.ndarray]) -> None:
    lo_mass, _, hi_mass = real_stats["mass"]
    lo_com, _, hi_com = real_stats["com"]
    for kind in ("canvas_black_on_white", "white_on_transparent_rgba", "photo", "huge_4000x3000", "tiny_24x24"):
        out = preprocess_image(KINDS[kind][0]())  # type: ignore[arg-type]
        assert lo_mass <= out.sum() <= hi_mass, f"{kind}: ink mass {out.sum():.1f} outside {real_stats['mass']}"
        com = _centre_of_mass(out)
        assert np.all((lo_com <= com) & (com <= hi_com)), f"{kind}: centre of mass {com}"
        assert real_stats["max"][0] <= out.max() <= 1.0


def test_real_drawings_survive_preprocessing(omniglot_dir: Path) -> None:
    """Omniglot drawings re-drawn as a user would (thick brush, big canvas) keep their look."""
    with zipfile.ZipFile(omniglot_dir / "images_evaluation.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        picks = [zf.read(n) for n in np.random.default_rng(1).choice(names, 20, replace=False)]
    widths, mass_ratio, corr = [], [], []
    for png in picks:
        original = decode_drawing(png).astype(np.float32) / 255.0
        ink = Image.fromarray(((~np.asarray(Image.open(io.BytesIO(png)))) * 255).astype(np.uint8))
        canvas = Image.eval(ink.resize((280, 280), Image.Resampling.BILINEAR).filter(ImageFilter.MaxFilter(9)),
                            lambda v: 255 - v)
        frame = preprocess_frame(canvas)
        out = preprocess_image(canvas)
        widths.append(stroke_width(frame))
        mass_ratio.append(out.sum() / original.sum())
        # compare shapes irrespective of size/position: both scaled into the same box
        corr.append(np.corrcoef(preprocess_image(png).ravel(), out.ravel())[0, 1])
    assert 4.0 <= np.median(widths) <= 5.0  # Omniglot median 2*area/perimeter: 4.4
    assert 0.7 <= np.median(mass_ratio) <= 1.4
    assert np.median(corr) > 0.8


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(Image.new("L", (280, 280), 255), id="blank_white"),
        pytest.param(Image.new("L", (280, 280), 128), id="uniform_grey"),
        pytest.param(Image.new("RGB", (64, 48), (255, 0, 0)), id="uniform_red"),
        pytest.param(Image.new("RGBA", (280, 280), (0, 0, 0, 0)), id="fully_transparent"),
        pytest.param(np.zeros((280, 280, 4), np.uint8), id="transparent_array"),
        pytest.param(np.ones((3, 3), np.float32), id="tiny_uniform"),
    ],
)
def test_no_ink(image: object) -> None:
    with pytest.raises(NoInkError):
        preprocess_image(image)  # type: ignore[arg-type]


def test_no_ink_few_specks_and_blank_photo() -> None:
    rng = np.random.default_rng(0)
    specks = np.full((280, 280), 255, np.uint8)
    specks[rng.integers(0, 280, 8), rng.integers(0, 280, 8)] = 0
    with pytest.raises(NoInkError):
        preprocess_image(specks)
    xx = np.linspace(0.55, 1.0, 1600)[None, :]
    paper = np.clip((0.88 * xx + rng.normal(0, 0.03, (1200, 1600))) * 255, 0, 255).astype(np.uint8)
    with pytest.raises(NoInkError):
        preprocess_image(jpeg_bytes(Image.fromarray(paper), quality=50))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"this is not an image" * 20, id="garbage"),
        pytest.param(png_bytes(draw_glyph())[:300], id="truncated_png"),
        pytest.param(jpeg_bytes(draw_glyph())[:400], id="truncated_jpeg_header"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, id="png_signature_only"),
    ],
)
def test_unreadable(data: bytes) -> None:
    with pytest.raises(UnreadableImageError):
        preprocess_image(data)


def test_unreadable_other_inputs() -> None:
    with pytest.raises(UnreadableImageError):
        preprocess_image(np.zeros((5, 5, 7), np.uint8))
    with pytest.raises(UnreadableImageError):
        preprocess_image("drawing.png")  # type: ignore[arg-type]
    with pytest.raises(UnreadableImageError):
        preprocess_image(np.array([["a"]]))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # 89-179 MP: Pillow warns
@pytest.mark.parametrize(("width", "height"), [(20000, 20000), (10000, 10000), (8000, 7000)])
def test_too_large_png_rejected_before_decoding(width: int, height: int) -> None:
    # The header holds no pixel data to decode: "too large" (not "unreadable") means the header refused it.
    # How fast the refusal is: benchmarks/bench_preprocess.py.
    with pytest.raises(ImageTooLargeError, match="too large"):
        preprocess_image(header_only_png(width, height))


def test_too_large_array_and_rgb_header() -> None:
    with pytest.raises(ImageTooLargeError):
        preprocess_image(header_only_png(30000, 30000, bit_depth=8, colour_type=2))
    huge_view = np.broadcast_to(np.zeros(1, np.uint8), (8000, 7000))  # no memory behind it
    assert huge_view.size > MAX_PIXELS
    with pytest.raises(ImageTooLargeError):
        preprocess_image(huge_view)


def test_error_hierarchy_and_messages() -> None:
    for cls in (NoInkError, UnreadableImageError, ImageTooLargeError):
        assert issubclass(cls, ImagePreprocessError) and issubclass(cls, ValueError)
    cases = [Image.new("L", (50, 50), 255), b"junk", header_only_png(20000, 20000)]
    for image in cases:
        with pytest.raises(ImagePreprocessError) as info:
            preprocess_image(image)  # type: ignore[arg-type]
        msg = str(info.value)
        assert 10 < len(msg) < 120 and "\n" not in msg and "Traceback" not in msg


# --------------------------------------------------------------------------- batch (speed: benchmarks/bench_preprocess.py)


def test_preprocess_many() -> None:
    batch = preprocess_many(im for im in (draw_glyph("A"), alpha_canvas("T"), png_bytes(draw_glyph("loop"))))
    assert batch.shape == (3, 28, 28) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], preprocess_image(draw_glyph("A")))
    assert preprocess_many([]).shape == (0, 28, 28)
