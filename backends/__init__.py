"""Model backends: ``runtime/`` (shared by all, names no family), one package per family, and
``families.py``, the one list of family specs the app serves."""
