"""A pickle that runs code when loaded: the bait for the "safetensors only" tests."""

from __future__ import annotations

from pathlib import Path


class Plant:
    """Unpickling this creates ``marker`` (it unpickles as ``open(marker, "w")``).

    A test plants it where the app might load weights and checks the marker never appears:
    proof that nothing unpickled the file, not merely that loading failed.
    """

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))
