"""What generated media decodes to, read back with Pillow and PyAV as a player would."""

import io
from dataclasses import dataclass, replace

import av
import numpy as np
from PIL import Image


def image_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32)


def distance(first: np.ndarray, second: np.ndarray) -> float:
    """Mean absolute difference per channel, 0 to 255 (or 0 to 2 for audio samples)."""
    return float(np.abs(first.astype(np.float32) - second.astype(np.float32)).mean())


@dataclass(frozen=True)
class Audio:
    container: str
    codec: str
    sample_rate: int
    channels: int
    samples: np.ndarray  # (channels, n) float32, as decoded
    stream_seconds: float  # the length the container states

    @property
    def seconds(self) -> float:
        return self.samples.shape[1] / self.sample_rate


def decode_audio(data: bytes) -> Audio:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)
        blocks = [
            block.to_ndarray()
            for frame in container.decode(stream)
            for block in resampler.resample(frame)
        ]
        return Audio(
            container.format.name,
            stream.codec_context.name,
            stream.rate,
            stream.channels,
            np.concatenate(blocks, axis=1),
            float(stream.duration * stream.time_base),
        )


@dataclass(frozen=True)
class Video:
    container: str
    codec: str
    pixel_format: str
    width: int
    height: int
    fps: float
    seconds: float  # the video stream's duration
    frames: np.ndarray  # (n, height, width, 3) uint8 RGB
    audio: Audio | None


def decode_video(data: bytes) -> Video:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        video = Video(
            container.format.name,
            stream.codec_context.name,
            stream.codec_context.pix_fmt,
            stream.codec_context.width,
            stream.codec_context.height,
            float(stream.average_rate),
            float(stream.duration * stream.time_base),
            frames,
            None,
        )
        has_audio = bool(container.streams.audio)
    if not has_audio:
        return video
    return replace(video, audio=decode_audio(data))
