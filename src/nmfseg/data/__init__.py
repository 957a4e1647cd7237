"""Datasets: formats, the scheme table, checks, splits and toy data.

- :mod:`~nmfseg.data.schemes`: the one table of channel orders and label -> region maps.
- :mod:`~nmfseg.data.formats`: readers and writers for MSD Task01, BraTS 2021, BraTS 2023,
  ISLES'22 (BIDS) and nnU-Net v2 raw folders.
- :mod:`~nmfseg.data.checks`: ``nmfseg check-data`` (nnU-Net style integrity checks).
- :mod:`~nmfseg.data.splits`: deterministic k-fold ``splits.json``.
- :mod:`~nmfseg.data.toy`: tiny learnable datasets in the real formats, for tests.

Import from the submodules (``from nmfseg.data.formats import open_dataset``); this package
itself imports nothing heavy.
"""
