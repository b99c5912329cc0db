"""Audio results as files and pictures: FLAC or WAV through ``soundfile``, and a waveform PNG.

``soundfile`` (libsndfile) writes both formats; torchaudio would too, but its releases stop
short of the pinned torch (NOTES.md). The waveform is drawn with PIL alone: one column per
slice of the samples, filled from its minimum to its maximum, one band per channel, the way
audio editors show a whole file at once. People look at a sound's shape (silence, loudness,
where it ends) more than they read its numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

#: What ``write_audio`` can write, by the suffix the file gets.
FORMATS = {"flac": ("FLAC", "PCM_24"), "wav": ("WAV", "PCM_16")}
BACKGROUND, WAVE, AXIS = (255, 255, 255), (37, 99, 235), (203, 213, 225)


def write_audio(path: Path, audio: np.ndarray, sample_rate: int, fmt: str = "flac") -> None:
    """Write ``audio`` ((channels, samples), float in [-1, 1]) to ``path`` as FLAC (24-bit) or WAV (16-bit).

    Samples outside [-1, 1] are clipped, as every player would clip them.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    import soundfile

    kind, subtype = FORMATS[fmt]
    frames = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0).T  # soundfile takes (samples, channels)
    soundfile.write(str(path), frames, int(sample_rate), subtype=subtype, format=kind)


def waveform(audio: np.ndarray, width: int = 800, height: int = 200) -> Image.Image:
    """A picture of ``audio``'s waveform: one band per channel, each column its slice's min to max."""
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[None]
    channels, length = samples.shape
    picture = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    band = height / max(1, channels)
    edges = np.linspace(0, length, width + 1).astype(int)
    for channel in range(channels):
        middle = band * (channel + 0.5)
        draw.line([(0, middle), (width, middle)], fill=AXIS)
        for x in range(width):
            start, end = edges[x], max(edges[x + 1], edges[x] + 1)
            piece = samples[channel, start:min(end, length)]
            if piece.size == 0:
                continue
            low, high = float(np.clip(piece.min(), -1, 1)), float(np.clip(piece.max(), -1, 1))
            draw.line([(x, middle - high * band / 2), (x, middle - low * band / 2)], fill=WAVE)
    return picture
