"""Media the assets tests upload: real images encoded by Pillow."""

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

ImageEncoder = Callable[..., bytes]


def _encode_image(image_format: str, size: tuple[int, int] = (256, 192)) -> bytes:
    """Noise, so a PNG of the default size is several 64 KiB chunks long."""
    buffer = io.BytesIO()
    Image.effect_noise(size, 64).convert("RGB").save(buffer, image_format)
    return buffer.getvalue()


@pytest.fixture
def encode_image() -> ImageEncoder:
    return _encode_image


@pytest.fixture
def files_under() -> Callable[[Path], list[Path]]:
    """Every file below a folder, drafts included."""
    return lambda root: sorted(path for path in root.rglob("*") if path.is_file())
