"""PyAV output shared by the generators: bit-exact containers and a stereo audio track.

FFmpeg marks its output with random serial numbers and its version unless told to be
bit-exact; with the flag, equal samples give equal bytes.
"""

from typing import BinaryIO

import av
import numpy as np
from av.container import OutputContainer

SAMPLE_RATE = 48_000
BITEXACT = {"flags": "+bitexact"}


def open_output(target: str | BinaryIO, container_format: str, **options: str) -> OutputContainer:
    return av.open(target, "w", format=container_format, options={"fflags": "+bitexact", **options})


class AudioTrack:
    """A stereo stream at SAMPLE_RATE, fed float samples in blocks of any length."""

    def __init__(self, container: OutputContainer, codec: str) -> None:
        self._container = container
        self._stream = container.add_stream(codec, rate=SAMPLE_RATE, layout="stereo")
        self._stream.codec_context.options = dict(BITEXACT)
        self._written = 0

    def write(self, samples: np.ndarray) -> None:
        """Encodes a (2, n) float32 block in [-1, 1]."""
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32), format="fltp", layout="stereo"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._written
        self._written += samples.shape[1]
        self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        self._container.mux(self._stream.encode(None))


def to_track(mono: np.ndarray, rate: int) -> np.ndarray:
    """Mono float samples at `rate` as a (2, n) float32 block at SAMPLE_RATE, n in proportion."""
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(mono, dtype=np.float32)[np.newaxis], format="fltp", layout="mono"
    )
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=SAMPLE_RATE)
    blocks = [
        block.to_ndarray() for block in [*resampler.resample(frame), *resampler.resample(None)]
    ]
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((2, 0), dtype=np.float32)
