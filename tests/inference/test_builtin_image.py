import io
import itertools

import numpy as np
import pytest
from PIL import Image

from magicpixels.services.inference.builtin_image import IMAGE_FORMATS, EncodedMedia, generate_image


def _decode(media: EncodedMedia) -> Image.Image:
    image = Image.open(io.BytesIO(media.data))
    image.load()
    return image


def _pixels(
    prompt: str, *, seed: int = 7, negative_prompt: str = "", size: int = 256
) -> np.ndarray:
    media = generate_image(
        prompt=prompt, negative_prompt=negative_prompt, width=size, height=size, seed=seed
    )
    return np.asarray(_decode(media), dtype=np.float32)


def test_png_1024_decodes_to_requested_size_and_rgb():
    media = generate_image(
        prompt="a misty mountain landscape at sunset", width=1024, height=1024, seed=1
    )

    image = _decode(media)

    assert media.content_type == "image/png"
    assert (media.width, media.height) == (1024, 1024)
    assert image.format == "PNG"
    assert image.size == (1024, 1024)
    assert image.mode == "RGB"


def test_image_is_not_flat():
    pixels = _pixels("neon cyberpunk city at night")

    assert pixels.std() > 20


@pytest.mark.parametrize(("width", "height"), [(64, 2048), (2048, 64), (1016, 72)])
def test_non_square_sizes(width, height):
    media = generate_image(
        prompt="ocean waves", width=width, height=height, seed=3, output_format="jpeg"
    )

    assert _decode(media).size == (width, height)
    assert (media.width, media.height) == (width, height)


@pytest.mark.parametrize("output_format", sorted(IMAGE_FORMATS))
def test_same_inputs_give_identical_bytes(output_format):
    request = {
        "prompt": "planets and bubbles in space",
        "width": 256,
        "height": 192,
        "seed": 42,
        "output_format": output_format,
    }

    assert generate_image(**request).data == generate_image(**request).data


@pytest.mark.parametrize("seed", [-1, 0, 2**70])
def test_any_integer_seed_is_accepted(seed):
    media = generate_image(prompt="city skyline", width=64, height=64, seed=seed)

    assert _decode(media).size == (64, 64)


def test_different_prompts_look_substantially_different():
    prompts = [
        "a misty mountain landscape at sunset",
        "neon cyberpunk city at night",
        "deep blue ocean waves",
        "abstract fluid shapes in gold and teal",
        "a cat sitting on a chair",
    ]
    images = {prompt: _pixels(prompt) for prompt in prompts}

    for first, second in itertools.combinations(prompts, 2):
        assert np.abs(images[first] - images[second]).mean() > 20, (first, second)


def test_different_seed_gives_different_bytes():
    request = {"prompt": "deep blue ocean waves", "width": 256, "height": 256}

    first = generate_image(seed=1, **request)
    second = generate_image(seed=2, **request)

    assert first.data != second.data


@pytest.mark.parametrize(("output_format", "pillow_format"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_lossy_formats_decode(output_format, pillow_format):
    media = generate_image(
        prompt="emerald forest", width=320, height=240, seed=5, output_format=output_format
    )

    image = _decode(media)

    assert media.content_type == IMAGE_FORMATS[output_format]
    assert image.format == pillow_format
    assert image.size == (320, 240)
    assert image.mode == "RGB"


@pytest.mark.parametrize("steps", [1, 4, 25])
def test_progress_is_monotonic_and_ends_at_one(steps):
    reported: list[float] = []

    generate_image(
        prompt="sunset", width=64, height=64, seed=1, steps=steps, on_progress=reported.append
    )

    assert len(reported) >= 2
    assert reported == sorted(reported)
    assert all(0 < fraction <= 1 for fraction in reported)
    assert reported[-1] == 1.0
    assert len(reported) == max(2, steps)


@pytest.mark.parametrize("output_format", ["gif", "PNG", "jpg", ""])
def test_unknown_format_is_rejected(output_format):
    with pytest.raises(ValueError, match="unsupported image format"):
        generate_image(prompt="x", width=64, height=64, seed=1, output_format=output_format)


@pytest.mark.parametrize(
    ("width", "height"),
    [(56, 64), (64, 2056), (100, 64), (64, 0), (-64, 64), (64.0, 64), (True, 64)],
)
def test_invalid_size_is_rejected(width, height):
    with pytest.raises(ValueError, match="must be a multiple of"):
        generate_image(prompt="x", width=width, height=height, seed=1)


@pytest.mark.parametrize("seed", [0, 5, 11])
def test_colour_word_steers_palette(seed):
    red = _pixels("deep red abstract shapes", seed=seed).mean(axis=(0, 1))
    blue = _pixels("deep blue abstract shapes", seed=seed).mean(axis=(0, 1))

    assert red[0] > blue[0] + 30
    assert blue[2] > red[2] + 30


def test_negative_prompt_pushes_away_named_hue():
    plain = _pixels("crimson abstract shapes", seed=3).mean(axis=(0, 1))
    avoided = _pixels("crimson abstract shapes", seed=3, negative_prompt="red").mean(axis=(0, 1))

    assert avoided[0] - avoided[2] < plain[0] - plain[2] - 30
