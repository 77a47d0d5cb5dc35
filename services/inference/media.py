"""What the generators share: the encoded result, request errors, progress ticks and the
cancellation they carry, input images."""

import io
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageOps

MAX_PROGRESS_TICKS = 1000
_WHITE = (255, 255, 255, 255)
# What Pillow raises for a malformed or truncated file.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


@dataclass(frozen=True)
class EncodedMedia:
    data: bytes
    content_type: str
    width: int | None = None
    height: int | None = None
    duration_seconds: float | None = None

    def metadata(self) -> dict[str, int | float]:
        """The dimensions this kind of media has, for a result message's optional fields."""
        found = {
            "width": self.width,
            "height": self.height,
            "duration_seconds": self.duration_seconds,
        }
        return {name: value for name, value in found.items() if value is not None}


class InvalidRequest(ValueError):
    """A request a generator cannot follow; `param` names the field (or input) at fault and
    `reason` says what is wrong with it, as an UPPER_SNAKE error reason."""

    def __init__(self, param: str, message: str, *, reason: str = "PARAMETER_INVALID") -> None:
        super().__init__(message)
        self.param = param
        self.reason = reason


class Canceled(Exception):
    """Raised by a progress callback to stop the work between two steps: nobody wants the
    result any more (the job was canceled, its lease lost, or the caller hung up)."""


class Progress:
    """Turns fractions of the work into at most `steps` evenly spaced reports in (0, 1]."""

    def __init__(self, steps: int, callback: Callable[[float], None] | None) -> None:
        self._ticks = min(max(2, int(steps)), MAX_PROGRESS_TICKS)
        self._sent = 0
        self._callback = callback

    def reach(self, fraction: float) -> None:
        if self._callback is None:
            return
        due = int(fraction * self._ticks + 1e-9)
        while self._sent < due:
            self._sent += 1
            self._callback(self._sent / self._ticks)

    def part(self, start: float, end: float) -> Callable[[float], None]:
        """Reports for a stage that covers [start, end] of the work, given its own fractions."""
        return lambda fraction: self.reach(start + (end - start) * fraction)


def open_input_image(data: bytes, param: str) -> Image.Image:
    """Decodes an input image upright and opaque (transparent parts on white), as RGB."""
    try:
        image = Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "WEBP"))
        image.load()
        image = ImageOps.exif_transpose(image)
    except _DECODE_ERRORS:
        raise InvalidRequest(
            param, f"{param} is not a readable PNG, JPEG or WebP image", reason="INPUT_UNREADABLE"
        ) from None
    if "A" in image.getbands() or "transparency" in image.info:
        ground = Image.new("RGBA", image.size, _WHITE)
        image = Image.alpha_composite(ground, image.convert("RGBA"))
    return image.convert("RGB")


def cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scales and centre-crops the image to fill exactly width x height, keeping its shape."""
    return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
