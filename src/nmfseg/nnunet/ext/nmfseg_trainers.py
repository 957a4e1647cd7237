"""nmfseg's nnU-Net trainers, where ``nnUNet_extTrainer`` finds them.

nnU-Net imports every module of the folders listed in ``nnUNet_extTrainer`` as a top-level
module and looks for the trainer class by name; this one only re-exports
:mod:`nmfseg.nnunet.trainers`, so the classes nnU-Net finds are nmfseg's own. The folder is
printed by ``nmfseg nnunet-path``.
"""

from nmfseg.nnunet.trainers import *  # noqa: F403
from nmfseg.nnunet.trainers import __all__  # noqa: F401
