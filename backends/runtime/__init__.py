"""What every model family shares and no family owns.

The registry (specs in, lazily built backends out), the memory manager and its probe, offload,
loading, tiny-model builds, downloads and the download plan, the preset schema and loader, outputs,
input parsing, errors, progress, and the Studio that ties them together. Nothing here imports a
family package: the families are handed in as specs (``backends/families.py``).
"""
