"""Reading and checking datasets (the phantoms that write them are :mod:`nmfseg.phantoms`).

- :mod:`~nmfseg.data.schemes`: the one table of channel orders and label -> region maps.
- :mod:`~nmfseg.data.formats`: the dataset formats (MSD Task01, BraTS 2021, BraTS 2023,
  ISLES'22 BIDS, nnU-Net v2 raw) behind one protocol and a registry.
- :mod:`~nmfseg.data.nifti`: NIfTI files: reads that name the file on error, atomic writes.
- :mod:`~nmfseg.data.checks`: ``nmfseg check-data`` (nnU-Net style integrity checks).
- :mod:`~nmfseg.data.splits`: deterministic k-fold ``splits.json``.
- :mod:`~nmfseg.data.normalization`: ``Preprocessing`` (per-channel normalization chosen from
  the channel's name, target spacing, axis order), the part of a run config that says it.
- :mod:`~nmfseg.data.resample`: resampling to another voxel size and back (MONAI).
- :mod:`~nmfseg.data.preprocess`: transpose, crop to the nonzero box, resample, normalize;
  undo it all (``restore``).
- :mod:`~nmfseg.data.transforms`: training patches and the paper's augmentations (MONAI).

Import from the submodules (``from nmfseg.data.formats import open_dataset``); this package
itself imports nothing heavy.
"""
