"""Built-in image to image: strength 0 gives the input back, 1 the prompt's own picture, and
between them the input's shapes in the prompt's colours."""

import io

import numpy as np
import pytest
from PIL import Image

from magicpixels.services.inference.builtin_image import IMAGE_FORMATS, generate_image
from magicpixels.services.inference.builtin_restyle import restyle_image
from magicpixels.services.inference.media import InvalidRequest
from tests.inference.probe import distance, image_pixels

SIZE = 128


@pytest.fixture(scope="module")
def photo() -> bytes:
    """The input: a picture of another prompt than the one it is restyled with."""
    return generate_image(prompt="a misty mountain landscape", width=SIZE, height=SIZE, seed=4).data


def _restyled(
    image: bytes, strength: float, prompt: str = "neon city at night", **more
) -> np.ndarray:
    request = {"width": SIZE, "height": SIZE, "seed": 1} | more
    media = restyle_image(image=image, prompt=prompt, strength=strength, **request)
    return image_pixels(media.data)


def _luma(pixels: np.ndarray) -> np.ndarray:
    return (pixels @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)).ravel()


def test_strength_zero_gives_the_input_back(photo):
    np.testing.assert_array_equal(_restyled(photo, 0.0), image_pixels(photo))


def test_strength_one_gives_the_prompts_own_picture(photo):
    own = generate_image(prompt="neon city at night", width=SIZE, height=SIZE, seed=1)

    np.testing.assert_array_equal(_restyled(photo, 1.0), image_pixels(own.data))


def test_the_output_moves_away_from_the_input_as_strength_grows(photo):
    source = image_pixels(photo)

    distances = [distance(_restyled(photo, s), source) for s in (0.0, 0.3, 0.6, 1.0)]

    assert distances == sorted(distances)
    assert distances[0] == 0
    assert distances[-1] > 40


def test_middle_strength_keeps_the_inputs_shapes(photo):
    source, look = (
        image_pixels(photo),
        image_pixels(
            generate_image(prompt="neon city at night", width=SIZE, height=SIZE, seed=1).data
        ),
    )
    restyled = _restyled(photo, 0.6)

    with_input = np.corrcoef(_luma(restyled), _luma(source))[0, 1]
    with_look = np.corrcoef(_luma(restyled), _luma(look))[0, 1]
    assert with_input > 0.6
    assert with_input > with_look


@pytest.mark.parametrize("seed", [0, 3])
def test_colour_words_steer_the_restyled_colours(photo, seed):
    red = _restyled(photo, 0.6, "deep red abstract shapes", seed=seed).mean(axis=(0, 1))
    blue = _restyled(photo, 0.6, "deep blue abstract shapes", seed=seed).mean(axis=(0, 1))

    assert red[0] > blue[0] + 20
    assert blue[2] > red[2] + 20


@pytest.mark.parametrize(("output_format", "pillow_format"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_output_has_the_requested_size_and_format_whatever_the_inputs(
    photo, output_format, pillow_format
):
    wide = generate_image(prompt="sea", width=320, height=96, seed=2, output_format="jpeg").data

    media = restyle_image(
        image=wide,
        prompt="golden forest",
        width=64,
        height=128,
        seed=5,
        strength=0.5,
        output_format=output_format,
    )

    with Image.open(io.BytesIO(media.data)) as image:
        assert (image.format, image.size, image.mode) == (pillow_format, (64, 128), "RGB")
    assert (media.content_type, media.width, media.height) == (
        IMAGE_FORMATS[output_format],
        64,
        128,
    )


@pytest.mark.parametrize("output_format", sorted(IMAGE_FORMATS))
def test_same_inputs_give_identical_bytes(photo, output_format):
    request = {
        "image": photo,
        "prompt": "violet orbs",
        "width": 96,
        "height": 64,
        "seed": 8,
        "strength": 0.45,
        "output_format": output_format,
    }

    assert restyle_image(**request).data == restyle_image(**request).data


def test_a_transparent_input_is_laid_on_white():
    clear = Image.new("RGBA", (SIZE, SIZE), (200, 0, 0, 0))
    buffer = io.BytesIO()
    clear.save(buffer, format="PNG")

    assert (_restyled(buffer.getvalue(), 0.0) == 255).all()


def test_an_unreadable_input_is_refused_as_such():
    with pytest.raises(InvalidRequest, match="not a readable") as raised:
        _restyled(b"\x89PNG\r\n\x1a\n truncated", 0.5)
    assert (raised.value.param, raised.value.reason) == ("input_asset_id", "INPUT_UNREADABLE")


@pytest.mark.parametrize("strength", [-0.1, 1.01, float("nan")])
def test_strength_outside_zero_to_one_is_refused(photo, strength):
    with pytest.raises(InvalidRequest, match="strength must be between 0 and 1") as raised:
        _restyled(photo, strength)
    assert raised.value.param == "strength"
