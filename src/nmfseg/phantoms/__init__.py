"""Synthetic datasets in the real on-disk formats: anatomical phantoms and tiny toys.

======================== ================================================================
module                   what it holds
======================== ================================================================
:mod:`~.synth`           :func:`synthesize_dataset`: BraTS- / ISLES'22- / head-CT-like phantoms
:mod:`~.slices`          2D BraTS-like phantoms: axial slices at a fine in-plane resolution
:mod:`~.anatomy`         the MNI152 template (inside the nilearn wheel), pose, scanner model
:mod:`~.brats`           gliomas (NCR, edema, enhancing rim, mass effect)
:mod:`~.isles`           infarcts in vascular territories, DWI/ADC
:mod:`~.ct`              head CT in HU: skull, scalp, haemorrhage and oedema, clinical voxel sizes
:mod:`~.overview`        the ``overview.png`` figure
:mod:`~.toy`             tiny learnable toys for tests and examples
======================== ================================================================

They are not patients: use them to check that a pipeline runs and learns, never to claim
clinical accuracy. Import from the submodules (this package imports nothing heavy).
"""
