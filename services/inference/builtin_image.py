"""Built-in CPU text-to-image generator: deterministic procedural art, no model weights.

Prompt words choose the palette, composition and texture; the seed varies the arrangement.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from magicpixels.services.inference.media import EncodedMedia, InvalidRequest, Progress
from magicpixels.services.inference.prompt import hash_text, last_match, prompt_words, word_set

IMAGE_FORMATS: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}

MIN_SIDE = 64
MAX_SIDE = 2048
SIDE_MULTIPLE = 8

_ENCODER_OPTIONS: dict[str, dict[str, object]] = {
    "png": {"format": "PNG", "compress_level": 1},
    "jpeg": {"format": "JPEG", "quality": 90},
    "webp": {"format": "WEBP", "quality": 90, "method": 4},
}


# Single hex codes expand into a dark/base/light family; several codes are a themed palette.
_PALETTE_WORDS: dict[str, str] = {
    "red": "c62828",
    "crimson": "a3162b",
    "scarlet": "e0301e",
    "ruby": "9b111e",
    "cherry": "b0182e",
    "wine": "6b1030",
    "maroon": "5c0f1c",
    "burgundy": "6d1a2e",
    "orange": "f57c00",
    "tangerine": "f28500",
    "amber": "ffb300",
    "yellow": "fdd835",
    "lemon": "f5e050",
    "gold": "d4a017",
    "golden": "e0b03a",
    "mustard": "d1a51c",
    "green": "2e7d32",
    "lime": "8bc34a",
    "emerald": "2a9d63",
    "mint": "8fe0b8",
    "olive": "6b7a2a",
    "jade": "00a86b",
    "moss": "5b7a35",
    "sage": "9caf88",
    "teal": "008080",
    "cyan": "00bcd4",
    "turquoise": "30d5c8",
    "aqua": "4dd9e8",
    "blue": "1e5fd6",
    "navy": "0b1f4d",
    "azure": "2f8be0",
    "cobalt": "0047ab",
    "sapphire": "0f52ba",
    "indigo": "3b1f8c",
    "cerulean": "2a7fc4",
    "violet": "7a3fc2",
    "purple": "6a1b9a",
    "lavender": "b39ddb",
    "lilac": "c8a2c8",
    "plum": "673147",
    "magenta": "d81b60",
    "fuchsia": "e0218a",
    "pink": "f48fb1",
    "rose": "e0577f",
    "coral": "ff7f50",
    "peach": "ffb88c",
    "salmon": "f08070",
    "brown": "6d4c41",
    "chocolate": "4e2a14",
    "coffee": "5b3a24",
    "rust": "b7410e",
    "copper": "b87333",
    "bronze": "b0772b",
    "sand": "d6bf8a",
    "beige": "e6d8b8",
    "cream": "f7ecd0",
    "ivory": "f6f1e1",
    "tan": "c9a27a",
    "khaki": "bfae7a",
    "white": "f4f4f2",
    "snow": "edf2f7",
    "silver": "bcc3ca",
    "grey": "80868e",
    "gray": "80868e",
    "steel": "4f6577",
    "slate": "4a5566",
    "charcoal": "2a2e33",
    "black": "111114",
    "ink": "15151f",
    "obsidian": "0d0b14",
    "pearl": "ece6dc",
    "ocean": "06275a 0c5a93 1593b8 6fd3e6",
    "sea": "0a3d62 1d7aa5 5fbfd6",
    "sky": "3f7fcf 7fb9ec d6ecfb",
    "sunset": "2b1a4a 7d2a6b d8503f f39a3c ffd46b",
    "sunrise": "34427e e98a8a f7b27a fff0b8",
    "dawn": "2f3b6e b07ca6 f6c49b",
    "dusk": "1a1d48 4f3577 b65a7a",
    "twilight": "15143a 3e2a6e 8a4f8f",
    "night": "05070f 0e1733 253a68",
    "midnight": "03040c 0c1330 1d295a",
    "forest": "0e2a18 1e4b29 3d7536 8bab58",
    "jungle": "0a3a1e 19683a 62b846",
    "fire": "2a0904 9f1c0b ef5119 ffc24a",
    "lava": "170400 701000 dd3700 ffa800",
    "ice": "e0f3fa a6d6e8 5f9fc4",
    "winter": "ebf0f6 a8bdd4 587797",
    "autumn": "541c0b a3401a d7802b e6b049",
    "spring": "f5c4d8 b6de78 6cbd70",
    "summer": "ffd24d 45bff2 7cc47f",
    "desert": "b8692f dca567 efd09d 86472a",
    "neon": "ff2bd6 00eaff 8c2bff 39ff14",
    "cyberpunk": "0d0221 ff2a6d 05d9e8 d1f7ff",
    "synthwave": "1a0533 ff3cac 784ba0 2b86c5",
    "space": "04030c 170c36 46278a b34ad0",
    "galaxy": "05030f 24104f 6a2c9a d157c9 4fb6f0",
    "cosmic": "05030f 24104f 6a2c9a d157c9 4fb6f0",
    "aurora": "03121f 0b5d4b 2de2a6 8a5cf6",
    "pastel": "ffd1dc c6e2ff d6f1c4 fff0b3",
    "candy": "ff8fb1 ffd36e 8fd6ff",
    "storm": "1b202b 364152 66758a",
    "rainbow": "e53935 fb8c00 fdd835 43a047 1e88e5 8e24aa",
    "vintage": "5b4636 a67c52 d9c3a0 8a9a8c",
    "earth": "3b2a1a 7a5530 a88a5a 5f6b3a",
    "tropical": "00a6a6 ffcf3f ff6f59 2bb673",
}

# word -> (saturation scale, value scale)
_MOOD_WORDS: dict[str, tuple[float, float]] = {
    "dark": (1.0, 0.6),
    "deep": (1.15, 0.72),
    "moody": (0.8, 0.65),
    "gloomy": (0.6, 0.55),
    "shadowy": (0.8, 0.55),
    "noir": (0.3, 0.6),
    "bright": (1.05, 1.25),
    "light": (0.8, 1.2),
    "sunny": (1.1, 1.2),
    "glowing": (1.2, 1.15),
    "luminous": (1.1, 1.2),
    "pale": (0.55, 1.2),
    "pastel": (0.5, 1.2),
    "soft": (0.75, 1.1),
    "misty": (0.55, 1.1),
    "foggy": (0.45, 1.1),
    "hazy": (0.6, 1.1),
    "vivid": (1.35, 1.05),
    "vibrant": (1.35, 1.05),
    "neon": (1.4, 1.1),
    "electric": (1.4, 1.05),
    "saturated": (1.4, 1.0),
    "bold": (1.2, 1.0),
    "muted": (0.6, 0.95),
    "dull": (0.5, 0.9),
    "faded": (0.55, 1.05),
    "vintage": (0.7, 0.95),
    "washed": (0.5, 1.1),
    "monochrome": (0.1, 1.0),
    "grayscale": (0.0, 1.0),
    "greyscale": (0.0, 1.0),
}

_LIGHT_GROUND_WORDS = word_set(
    "light bright pale pastel white snow minimal airy soft misty foggy ice winter cream"
)
_DARK_GROUND_WORDS = word_set(
    "dark deep night midnight moody noir black space galaxy cosmic gloomy shadowy"
)

_TEXTURE_WORDS: dict[str, float] = {
    "grain": 0.14,
    "grainy": 0.14,
    "film": 0.12,
    "noise": 0.14,
    "noisy": 0.16,
    "rough": 0.18,
    "texture": 0.14,
    "textured": 0.16,
    "canvas": 0.12,
    "paper": 0.12,
    "painted": 0.12,
    "painting": 0.12,
    "oil": 0.12,
    "watercolor": 0.12,
    "stone": 0.18,
    "marble": 0.16,
    "concrete": 0.18,
    "cloud": 0.12,
    "cloudy": 0.14,
    "smoke": 0.14,
    "smoky": 0.14,
    "smooth": 0.02,
    "clean": 0.02,
    "minimal": 0.02,
    "flat": 0.01,
    "glossy": 0.02,
    "sleek": 0.02,
}
_DEFAULT_TEXTURE = 0.07

_VIGNETTE_WORDS: dict[str, float] = {
    "cinematic": 0.55,
    "dramatic": 0.6,
    "moody": 0.55,
    "noir": 0.65,
    "vintage": 0.5,
    "film": 0.5,
    "minimal": 0.1,
    "flat": 0.05,
    "clean": 0.1,
}
_DEFAULT_VIGNETTE = 0.3

_DENSITY_WORDS: dict[str, float] = {
    "minimal": 0.5,
    "simple": 0.6,
    "lone": 0.4,
    "single": 0.4,
    "lonely": 0.5,
    "many": 1.7,
    "busy": 1.8,
    "crowded": 1.8,
    "dense": 1.7,
    "chaotic": 1.9,
}

_MOTIF_WORDS: dict[str, frozenset[str]] = {
    "ridges": word_set(
        "mountain hill landscape horizon valley canyon dune desert peak cliff range "
        "panorama countryside field meadow volcano"
    ),
    "waves": word_set(
        "ocean sea wave river water lake flow flowing silk ribbon wind aurora tide beach stream"
    ),
    "orbs": word_set(
        "sun moon planet orb bubble bokeh lantern firefly star galaxy space cosmic balloon "
        "circle dot glow nebula"
    ),
    "blobs": word_set(
        "abstract fluid liquid organic cell blob lava flower garden bloom jelly marble "
        "psychedelic dream"
    ),
    "skyline": word_set(
        "city skyline building tower street urban downtown metropolis cyberpunk skyscraper town"
    ),
}
_MOTIF_ORDER = ("ridges", "waves", "orbs", "blobs", "skyline")
_SKY_MOTIFS = frozenset({"ridges", "waves", "skyline"})

_CELESTIAL_WORDS = word_set("sun moon sunset sunrise planet dawn dusk eclipse moonlight moonlit")
_STOPWORDS = word_set(
    "a an the of in on at by for to from with and or is are be as into over under this that very"
)
_GOLDEN_RATIO = 0.618034
_PALETTE_SIZE = 5


@dataclass(frozen=True)
class _Style:
    palette: np.ndarray  # (n, 3) float32 RGB in [0, 1], sorted dark to light
    motif: str
    texture: float
    vignette: float
    density: float
    celestial: bool
    light_ground: bool
    fingerprint: int


def generate_image(
    *,
    prompt: str,
    negative_prompt: str = "",
    width: int,
    height: int,
    seed: int,
    output_format: str = "png",
    steps: int = 4,
    on_progress: Callable[[float], None] | None = None,
) -> EncodedMedia:
    check_image_request(output_format, width, height)
    progress = Progress(steps, on_progress)
    pixels = render_image(
        prompt=prompt,
        negative_prompt=negative_prompt,
        width=width,
        height=height,
        seed=seed,
        on_fraction=progress.part(0.0, 0.8),
    )
    media = encode_image(pixels, output_format)
    progress.reach(1.0)
    return media


def render_image(
    *,
    prompt: str,
    negative_prompt: str,
    width: int,
    height: int,
    seed: int,
    on_fraction: Callable[[float], None],
) -> np.ndarray:
    """The prompt's picture as (height, width, 3) uint8 RGB; `on_fraction` hears its progress."""
    style = _read_style(prompt, negative_prompt)
    rng = np.random.default_rng([style.fingerprint, int(seed) % 2**64])
    on_fraction(0.125)
    canvas = _background(style, rng, int(height), int(width))
    on_fraction(0.375)
    _MOTIF_PAINTERS[style.motif](canvas, style, rng)
    on_fraction(0.75)
    pixels = _finish(canvas, style, rng)
    on_fraction(1.0)
    return pixels


def encode_image(pixels: np.ndarray, output_format: str) -> EncodedMedia:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, **_ENCODER_OPTIONS[output_format])
    height, width, _ = pixels.shape
    return EncodedMedia(buffer.getvalue(), IMAGE_FORMATS[output_format], width, height)


def check_image_request(output_format: str, width: int, height: int) -> None:
    if output_format not in IMAGE_FORMATS:
        raise InvalidRequest(
            "output_format",
            f"unsupported image format {output_format!r}; use one of {sorted(IMAGE_FORMATS)}",
        )
    check_size(width, height)


def check_size(width: int, height: int) -> None:
    for name, side in (("width", width), ("height", height)):
        if not _is_valid_side(side):
            raise InvalidRequest(
                name,
                f"{name} must be a multiple of {SIDE_MULTIPLE} "
                f"between {MIN_SIDE} and {MAX_SIDE}, got {side!r}",
            )


def _is_valid_side(side: object) -> bool:
    if not isinstance(side, (int, np.integer)) or isinstance(side, bool):
        return False
    return MIN_SIDE <= side <= MAX_SIDE and side % SIDE_MULTIPLE == 0


# ---------------------------------------------------------------- prompt reading


def _read_style(prompt: str, negative_prompt: str) -> _Style:
    words = prompt_words(prompt)
    negative = prompt_words(negative_prompt)
    fingerprint = hash_text(prompt.strip())
    return _Style(
        palette=_build_palette(words, negative, fingerprint),
        motif=_choose_motif(words, fingerprint),
        texture=last_match(words, _TEXTURE_WORDS, _DEFAULT_TEXTURE),
        vignette=last_match(words, _VIGNETTE_WORDS, _DEFAULT_VIGNETTE),
        density=last_match(words, _DENSITY_WORDS, 1.0),
        celestial=any(word in _CELESTIAL_WORDS for word in words),
        light_ground=_wants_light_ground(words, fingerprint),
        fingerprint=fingerprint,
    )


def _choose_motif(words: list[str], fingerprint: int) -> str:
    scores = dict.fromkeys(_MOTIF_ORDER, 0)
    first_seen = {motif: len(words) for motif in _MOTIF_ORDER}
    for index, word in enumerate(words):
        for motif, vocabulary in _MOTIF_WORDS.items():
            if word in vocabulary:
                scores[motif] += 1
                first_seen[motif] = min(first_seen[motif], index)
    best = max(_MOTIF_ORDER, key=lambda motif: (scores[motif], -first_seen[motif]))
    return best if scores[best] else _MOTIF_ORDER[fingerprint % len(_MOTIF_ORDER)]


def _wants_light_ground(words: list[str], fingerprint: int) -> bool:
    vote = sum(word in _LIGHT_GROUND_WORDS for word in words)
    vote -= sum(word in _DARK_GROUND_WORDS for word in words)
    return vote > 0 if vote else bool(fingerprint >> 7 & 1)


# ---------------------------------------------------------------- palette


def _build_palette(words: list[str], negative: list[str], fingerprint: int) -> np.ndarray:
    named = _interleave([_colour_family(word) for word in words if word in _PALETTE_WORDS])[:6]
    content = [word for word in words if word not in _STOPWORDS]
    anchor = named[0] if named else None
    colours = named + _hashed_colours(content, fingerprint, anchor, _PALETTE_SIZE - len(named))
    saturation, value = _mood_scales(words)
    banned = [hue for word in negative if word in _PALETTE_WORDS for hue in _named_hues(word)]
    colours = [_avoid_hues(_scale_hsv(colour, saturation, value), banned) for colour in colours]
    rgb = np.array([colorsys.hsv_to_rgb(*colour) for colour in colours], dtype=np.float32)
    return _ensure_contrast(rgb[np.argsort(_luminance(rgb), kind="stable")])


def _hex_to_hsv(code: str) -> tuple[float, float, float]:
    red, green, blue = (int(code[i : i + 2], 16) / 255 for i in (0, 2, 4))
    return colorsys.rgb_to_hsv(red, green, blue)


def _colour_family(word: str) -> list[tuple[float, float, float]]:
    codes = _PALETTE_WORDS[word].split()
    if len(codes) > 1:
        return [_hex_to_hsv(code) for code in codes]
    hue, saturation, value = _hex_to_hsv(codes[0])
    return [
        ((hue - 0.015) % 1.0, min(1.0, saturation * 1.05), value * 0.5),
        (hue, saturation, value),
        ((hue + 0.02) % 1.0, saturation * 0.7, min(1.0, value * 1.2 + 0.1)),
    ]


def _interleave(
    families: list[list[tuple[float, float, float]]],
) -> list[tuple[float, float, float]]:
    longest = max((len(family) for family in families), default=0)
    return [family[i] for i in range(longest) for family in families if i < len(family)]


def _hashed_colours(
    content: list[str], fingerprint: int, anchor: tuple[float, float, float] | None, count: int
) -> list[tuple[float, float, float]]:
    if count <= 0:
        return []
    picker = np.random.default_rng(fingerprint)
    offsets = _hue_offsets(picker, anchored=anchor is not None)
    base_hue = anchor[0] if anchor else (fingerprint >> 16) % 3600 / 3600
    base_saturation = anchor[1] * 0.8 if anchor else float(picker.uniform(0.4, 0.85))
    colours = []
    for index in range(count):
        word_jitter = (
            hash_text(content[index % len(content)]) % 1000 / 1000 - 0.5 if content else 0.0
        )
        hue = (base_hue + offsets[index % len(offsets)] + 0.06 * word_jitter) % 1.0
        value = 0.22 + 0.73 * ((index * _GOLDEN_RATIO + picker.uniform(0, 0.25)) % 1.0)
        saturation = base_saturation * (1.1 - 0.45 * value)
        colours.append((hue, float(np.clip(saturation, 0, 1)), float(value)))
    return colours


def _hue_offsets(picker: np.random.Generator, anchored: bool) -> tuple[float, ...]:
    if anchored:
        return (0.06, -0.07, 0.12, -0.1)
    schemes = ((0.0, 0.08, -0.08), (0.0, 0.5, 0.04), (0.0, 1 / 3, 2 / 3), (0.0, 0.42, 0.58))
    return schemes[int(picker.integers(len(schemes)))]


def _mood_scales(words: list[str]) -> tuple[float, float]:
    saturation, value = 1.0, 1.0
    for word in words:
        if word in _MOOD_WORDS:
            saturation *= _MOOD_WORDS[word][0]
            value *= _MOOD_WORDS[word][1]
    return min(saturation, 1.6), float(np.clip(value, 0.4, 1.5))


def _scale_hsv(
    colour: tuple[float, float, float], saturation: float, value: float
) -> tuple[float, float, float]:
    hue, sat, val = colour
    return hue, min(1.0, sat * saturation), min(1.0, val * value)


def _named_hues(word: str) -> list[float]:
    return [
        hue
        for hue, sat, val in map(_hex_to_hsv, _PALETTE_WORDS[word].split())
        if sat > 0.25 and val > 0.15
    ]


def _avoid_hues(
    colour: tuple[float, float, float], banned: list[float]
) -> tuple[float, float, float]:
    hue, saturation, value = colour
    for banned_hue in banned:
        distance = (hue - banned_hue + 0.5) % 1.0 - 0.5
        if abs(distance) < 0.14 and saturation > 0.12:
            hue = (banned_hue + (0.2 if distance >= 0 else -0.2)) % 1.0
    return hue, saturation, value


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def _ensure_contrast(palette: np.ndarray) -> np.ndarray:
    # Without a luminance spread the shapes vanish into the background.
    luminance = _luminance(palette)
    if luminance[-1] - luminance[0] >= 0.3:
        return palette
    palette = palette.copy()
    palette[0] *= 0.45
    palette[-1] = palette[-1] + (1.0 - palette[-1]) * 0.55
    return palette


# ---------------------------------------------------------------- painting helpers


def _smoothstep(edge0, edge1, x):
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _blend(
    canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray, rows=slice(None), cols=slice(None)
) -> None:
    region = canvas[rows, cols]
    region += (colour - region) * mask[..., None]


def _upsample_axis(grid: np.ndarray, size: int, axis: int) -> np.ndarray:
    cells = grid.shape[axis] - 1
    position = (np.arange(size, dtype=np.float32) + 0.5) * (cells / size)
    index = np.minimum(position.astype(np.intp), cells - 1)
    weight = position - index.astype(np.float32)
    weight = weight * weight * (3.0 - 2.0 * weight)
    shape = (-1, 1) if axis == 0 else (1, -1)
    low, high = np.take(grid, index, axis=axis), np.take(grid, index + 1, axis=axis)
    return low + (high - low) * weight.reshape(shape)


def _value_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    short = min(height, width)
    cells_y, cells_x = max(1, round(cells * height / short)), max(1, round(cells * width / short))
    grid = rng.random((cells_y + 1, cells_x + 1), dtype=np.float32)
    return _upsample_axis(_upsample_axis(grid, height, 0), width, 1)


def _fbm(rng: np.random.Generator, height: int, width: int, cells: int, octaves: int) -> np.ndarray:
    """Fractal value noise in roughly [-1, 1]."""
    total = np.zeros((height, width), dtype=np.float32)
    amplitude, weight = 1.0, 0.0
    for octave in range(octaves):
        total += (_value_noise(rng, height, width, cells * 2**octave) - 0.5) * amplitude
        weight += amplitude * 0.5
        amplitude *= 0.5
    return total / weight


def _noise_line(rng: np.random.Generator, length: int, cells: int, octaves: int) -> np.ndarray:
    """Fractal 1-D noise in [0, 1]; linear interpolation keeps peaks sharp."""
    total = np.zeros(length, dtype=np.float32)
    amplitude, weight = 1.0, 0.0
    for octave in range(octaves):
        knots = cells * 2**octave
        samples = np.linspace(0, knots, length, dtype=np.float32)
        line = np.interp(samples, np.arange(knots + 1), rng.random(knots + 1))
        total += amplitude * line.astype(np.float32)
        weight += amplitude
        amplitude *= 0.5
    return total / weight


def _gradient_lut(stops: np.ndarray, size: int = 512) -> np.ndarray:
    position = np.linspace(0, len(stops) - 1, size, dtype=np.float32)
    index = np.minimum(position.astype(np.intp), len(stops) - 2)
    blend = _smoothstep(0.0, 1.0, position - index)[:, None]
    return (stops[index] + (stops[index + 1] - stops[index]) * blend).astype(np.float32)


def _mix(first: np.ndarray, second: np.ndarray, amount: float) -> np.ndarray:
    return (first + (second - first) * amount).astype(np.float32)


def _ground_and_accents(style: _Style) -> tuple[np.ndarray, np.ndarray]:
    palette = style.palette
    if style.light_ground:
        return palette[:-4:-1], palette[:-3]
    return palette[:3], palette[3:]


# ---------------------------------------------------------------- composition


def _background(style: _Style, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    if style.motif in _SKY_MOTIFS:
        stops, angle = style.palette[1:], np.pi / 2
    else:
        stops, angle = _ground_and_accents(style)[0], float(rng.uniform(0, 2 * np.pi))
    short = min(height, width)
    ys = (np.arange(height, dtype=np.float32)[:, None] - height / 2) / short
    xs = (np.arange(width, dtype=np.float32)[None, :] - width / 2) / short
    reach = float(abs(np.cos(angle)) * width + abs(np.sin(angle)) * height) / short
    along = (xs * float(np.cos(angle)) + ys * float(np.sin(angle))) / reach + 0.5
    along += 0.1 * _fbm(rng, height, width, cells=3, octaves=2)
    lut = _gradient_lut(stops)
    index = np.clip(along * (len(lut) - 1), 0, len(lut) - 1).astype(np.intp)
    return lut[index]


def _sun_colour(style: _Style) -> np.ndarray:
    return _mix(style.palette[-1], np.ones(3, dtype=np.float32), 0.45)


def _draw_soft_disc(
    canvas: np.ndarray,
    centre: tuple[float, float],
    radius: float,
    colour: np.ndarray,
    *,
    alpha: float,
    glow: float,
) -> None:
    height, width, _ = canvas.shape
    cy, cx = centre
    falloff = 0.3 * radius + 1.0
    # Far enough out that the halo has faded below one 8-bit level.
    reach = radius + falloff * float(np.log(max(255.0 * glow, 1.0))) + 2.0
    rows = slice(int(np.clip(cy - reach, 0, height)), int(np.clip(cy + reach + 1, 0, height)))
    cols = slice(int(np.clip(cx - reach, 0, width)), int(np.clip(cx + reach + 1, 0, width)))
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return
    dy = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] - cy
    dx = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] - cx
    distance = np.sqrt(dy * dy + dx * dx)
    body = 1.0 - _smoothstep(radius * 0.9 - 1.0, radius + 1.0, distance)
    halo = glow * np.exp(-np.maximum(distance - radius, 0.0) / falloff)
    # Light from the upper left gives the discs some volume.
    shade = np.clip(1.0 - 0.2 * (dx + dy) / (radius * 1.4 + 1.0), 0.75, 1.25)
    mask = np.minimum(body + halo * (1.0 - body), 1.0) * alpha
    _blend(canvas, mask, colour * shade[..., None], rows, cols)


def _draw_celestial(
    canvas: np.ndarray, style: _Style, rng: np.random.Generator, horizon: float
) -> None:
    if not (style.celestial or rng.random() < 0.35):
        return
    height, width, _ = canvas.shape
    radius = min(height, width) * float(rng.uniform(0.06, 0.13))
    centre = (
        horizon - float(rng.uniform(0.15, 0.6)) * horizon,
        width * float(rng.uniform(0.2, 0.8)),
    )
    _draw_soft_disc(canvas, centre, radius, _sun_colour(style), alpha=0.95, glow=0.6)


def _fill_below(
    canvas: np.ndarray, top: np.ndarray, colour: np.ndarray, shade: float, crest: float = 0.0
) -> None:
    height = canvas.shape[0]
    first_row = int(np.clip(top.min() - 2, 0, height))
    ys = np.arange(first_row, height, dtype=np.float32)[:, None]
    below = ys - top[None, :]
    mask = _smoothstep(-1.0, 1.0, below)
    light = 1.0 - shade * np.clip(below / (height * 0.35), 0.0, 1.0)
    if crest:
        light += crest * np.exp(-np.maximum(below, 0.0) / (height * 0.012))
    _blend(canvas, mask, colour * light[..., None], rows=slice(first_row, None))


def _paint_ridges(canvas: np.ndarray, style: _Style, rng: np.random.Generator) -> None:
    height, width, _ = canvas.shape
    horizon = height * float(rng.uniform(0.42, 0.62))
    _draw_celestial(canvas, style, rng, horizon)
    haze, rock = style.palette[-1], style.palette[0] * 0.55
    layers = int(rng.integers(3, 6))
    for layer in range(layers):
        depth = (layer + 1) / layers
        profile = _noise_line(rng, width, cells=int(rng.integers(3, 7)), octaves=5)
        baseline = horizon + (height - horizon) * 0.6 * depth**1.6
        top = baseline - profile * height * (0.28 - 0.12 * depth)
        _fill_below(canvas, top, _mix(haze, rock, 0.25 + 0.75 * depth), shade=0.35 * depth)


def _paint_waves(canvas: np.ndarray, style: _Style, rng: np.random.Generator) -> None:
    height, width, _ = canvas.shape
    bands = max(2, round(int(rng.integers(4, 7)) * style.density))
    start = height * float(rng.uniform(0.3, 0.5))
    _draw_celestial(canvas, style, rng, start)
    xs, palette = np.arange(width, dtype=np.float32), style.palette
    for band in range(bands):
        baseline = start + (height - start) * 0.85 * band / bands
        colour = _mix(palette[-1 - band % (len(palette) - 1)], palette[0], 0.5 * (band + 1) / bands)
        _fill_below(canvas, _wave_line(rng, xs, baseline, height), colour, shade=0.3, crest=0.25)


def _wave_line(
    rng: np.random.Generator, xs: np.ndarray, baseline: float, height: int
) -> np.ndarray:
    amplitude = height * float(rng.uniform(0.015, 0.06))
    frequency = float(rng.uniform(1.0, 3.5)) * 2 * np.pi / len(xs)
    swell = np.sin(frequency * xs + float(rng.uniform(0, 2 * np.pi)))
    ripple = _noise_line(rng, len(xs), cells=8, octaves=3) - 0.5
    return baseline + amplitude * (swell + 0.6 * ripple)


def _paint_orbs(canvas: np.ndarray, style: _Style, rng: np.random.Generator) -> None:
    height, width, _ = canvas.shape
    short = min(height, width)
    accents = _ground_and_accents(style)[1]
    count = max(2, round((4 + style.fingerprint % 5 + int(rng.integers(0, 4))) * style.density))
    radii = np.sort(rng.uniform(0.04, 0.3, size=count))[::-1] * short
    for radius in radii:
        colour = accents[int(rng.integers(len(accents)))] * float(rng.uniform(0.85, 1.15))
        centre = (float(rng.uniform(0, height)), float(rng.uniform(0, width)))
        alpha, glow = float(rng.uniform(0.45, 0.95)), float(rng.uniform(0.0, 0.5))
        _draw_soft_disc(canvas, centre, float(radius), colour, alpha=alpha, glow=glow)


def _paint_blobs(canvas: np.ndarray, style: _Style, rng: np.random.Generator) -> None:
    height, width, _ = canvas.shape
    count = max(3, round(int(rng.integers(4, 8)) * style.density))
    field = _metaball_field(rng, height, width, count)
    accents = _ground_and_accents(style)[1]
    for layer, level in enumerate((0.9, 1.6, 2.8)):
        colour = accents[(layer + style.fingerprint) % len(accents)]
        mask = _smoothstep(level * 0.96, level * 1.04, field) * 0.92
        lift = 1.0 + 0.3 * _smoothstep(level, level * 2.5, field)
        _blend(canvas, mask, colour * lift[..., None])


def _metaball_field(rng: np.random.Generator, height: int, width: int, count: int) -> np.ndarray:
    short = min(height, width)
    ys = np.arange(height, dtype=np.float32)[:, None] / short
    xs = np.arange(width, dtype=np.float32)[None, :] / short
    field = np.zeros((height, width), dtype=np.float32)
    for _ in range(count):
        cy = float(rng.uniform(0.15, 0.85)) * height / short
        cx = float(rng.uniform(0.15, 0.85)) * width / short
        radius = float(rng.uniform(0.07, 0.2))
        field += radius * radius / ((ys - cy) ** 2 + (xs - cx) ** 2 + 1e-4)
    return field


def _paint_skyline(canvas: np.ndarray, style: _Style, rng: np.random.Generator) -> None:
    height, width, _ = canvas.shape
    horizon = height * float(rng.uniform(0.55, 0.7))
    _draw_celestial(canvas, style, rng, horizon)
    haze, shadow = style.palette[-1], style.palette[0] * 0.45
    for layer in range(3):
        depth = (layer + 1) / 3
        top = _building_tops(rng, (height, width), horizon, depth=depth, density=style.density)
        _fill_below(canvas, top, _mix(haze, shadow, 0.3 + 0.7 * depth), shade=0.2)
        if layer:
            _light_windows(canvas, rng, top, _sun_colour(style), alpha=0.45 * layer)


def _building_tops(
    rng: np.random.Generator, size: tuple[int, int], horizon: float, *, depth: float, density: float
) -> np.ndarray:
    height, width = size
    short = min(height, width)
    narrowest = max(4, int(short * 0.035 / density))
    widths = rng.integers(narrowest, narrowest * 3, size=width // narrowest + 1)
    rise = rng.uniform(0.05, 0.45 - 0.1 * depth, size=widths.size) * height
    tops = horizon + (height - horizon) * 0.45 * depth - rise
    return np.round(np.repeat(tops, widths)[:width]).astype(np.float32)


def _light_windows(
    canvas: np.ndarray, rng: np.random.Generator, top: np.ndarray, colour: np.ndarray, alpha: float
) -> None:
    height, width, _ = canvas.shape
    cell = max(4, min(height, width) // 70)
    first_row = int(top.min())
    ys = np.arange(first_row, height)[:, None]
    xs = np.arange(width)[None, :]
    lit_cells = rng.random((height // cell + 2, width // cell + 2)) < 0.3
    lit = lit_cells[ys // cell, xs // cell] & (ys % cell < cell // 2) & (xs % cell < cell // 2)
    lit &= ys > top[None, :] + cell
    _blend(canvas, lit.astype(np.float32) * alpha, colour, rows=slice(first_row, None))


_MOTIF_PAINTERS: dict[str, Callable[[np.ndarray, _Style, np.random.Generator], None]] = {
    "ridges": _paint_ridges,
    "waves": _paint_waves,
    "orbs": _paint_orbs,
    "blobs": _paint_blobs,
    "skyline": _paint_skyline,
}


# ---------------------------------------------------------------- finishing and encoding


def _vignette(height: int, width: int, strength: float) -> np.ndarray:
    ys = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    return 1.0 - strength * _smoothstep(0.4, 2.0, ys * ys + xs * xs)


def _finish(canvas: np.ndarray, style: _Style, rng: np.random.Generator) -> np.ndarray:
    height, width, _ = canvas.shape
    light = 1.0 + style.texture * _fbm(rng, height, width, cells=24, octaves=3)
    light *= _vignette(height, width, style.vignette)
    canvas *= light[..., None]
    # Sub-level dither hides banding in the smooth gradients.
    canvas *= 255.0
    canvas += rng.random((height, width), dtype=np.float32)[..., None]
    return np.clip(canvas, 0.0, 255.0).astype(np.uint8)
