"""Built-in CPU image-to-image: the input repainted in the look the prompt gives text to image.

The prompt's picture (the text-to-image output for the same prompt, size and seed) lends the
input its colours: each input pixel takes the colour found at the same brightness rank in the
prompt's picture, in fewer and fewer tones as `strength` grows, and the picture itself shows
through more and more. `strength` 0 gives the input back; 1 gives the prompt's picture.
"""

from collections.abc import Callable

import numpy as np

from magicpixels.services.inference.builtin_image import (
    check_image_request,
    encode_image,
    render_image,
)
from magicpixels.services.inference.media import (
    EncodedMedia,
    InvalidRequest,
    Progress,
    cover,
    open_input_image,
)

_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
_RANK_LEVELS = 256
_PALETTE_TONES = 64
# Brightness levels the input is posterised to, from a light touch to full strength.
_MOST_TONES = 48
_FEWEST_TONES = 6


def restyle_image(
    *,
    image: bytes,
    prompt: str,
    negative_prompt: str = "",
    width: int,
    height: int,
    seed: int,
    strength: float,
    output_format: str = "png",
    steps: int = 4,
    on_progress: Callable[[float], None] | None = None,
) -> EncodedMedia:
    check_image_request(output_format, width, height)
    _check_strength(strength)
    progress = Progress(steps, on_progress)
    source = np.asarray(cover(open_input_image(image, "input_asset_id"), width, height))
    progress.reach(0.1)
    look = render_image(
        prompt=prompt,
        negative_prompt=negative_prompt,
        width=width,
        height=height,
        seed=seed,
        on_fraction=progress.part(0.1, 0.6),
    )
    pixels = restyle(source, look, strength)
    progress.reach(0.8)
    media = encode_image(pixels, output_format)
    progress.reach(1.0)
    return media


def _check_strength(strength: float) -> None:
    if not 0.0 <= strength <= 1.0:  # NaN fails too
        raise InvalidRequest("strength", f"strength must be between 0 and 1, got {strength!r}")


def restyle(source: np.ndarray, look: np.ndarray, strength: float) -> np.ndarray:
    """Both (height, width, 3) uint8 of one size; the result likewise."""
    rank = _brightness_rank(source)
    tones = round(_MOST_TONES + (_FEWEST_TONES - _MOST_TONES) * strength)
    rank += ((np.floor(rank * tones) + 0.5) / tones - rank) * strength
    painted = _colour_at_rank(_palette_by_rank(look), rank)
    pixels = source.astype(np.float32)
    pixels += (painted - pixels) * min(1.0, 1.6 * strength)
    pixels += (look - pixels) * strength**2
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8)


def _brightness_rank(pixels: np.ndarray) -> np.ndarray:
    """Each pixel's brightness as a fraction of the pixels darker than it, in [0, 1)."""
    luma = (pixels @ _LUMA).astype(np.intp)
    counts = np.bincount(luma.ravel(), minlength=_RANK_LEVELS)
    below = (np.cumsum(counts) - counts / 2) / luma.size
    return below[luma].astype(np.float32)


def _palette_by_rank(look: np.ndarray) -> np.ndarray:
    """The look's mean colour at each of _PALETTE_TONES brightness ranks, dark to light."""
    sample = look[::4, ::4].reshape(-1, 3).astype(np.float32)
    order = np.argsort(sample @ _LUMA, kind="stable")
    groups = np.array_split(sample[order], _PALETTE_TONES)
    return np.array([group.mean(axis=0) for group in groups], dtype=np.float32)


def _colour_at_rank(palette: np.ndarray, rank: np.ndarray) -> np.ndarray:
    position = rank * (len(palette) - 1)
    index = np.minimum(position.astype(np.intp), len(palette) - 2)
    weight = (position - index)[..., None]
    return palette[index] + (palette[index + 1] - palette[index]) * weight
