"""nmfseg inside nnU-Net v2 (the optional extra ``nmfseg[nnunet]``).

=================================== ==========================================================
module                              what it holds
=================================== ==========================================================
:mod:`~.trainers`                   the nnU-Net trainers of nmfseg networks (imports nnunetv2)
:mod:`~.plans`                      plans variants for any registered network
                                    (``nmfseg nnunet-plans``), the extTrainer folder
``ext/nmfseg_trainers.py``          what ``nnUNet_extTrainer`` points to (``nmfseg nnunet-path``)
=================================== ==========================================================

Reading an nnU-Net results folder of these trainers back into nmfseg (``explain``,
``ablate``, ``Predictor.from_run``) needs no nnU-Net: :mod:`nmfseg.inference.nnunet_results`.
Importing this package does not import nnU-Net; :mod:`~.trainers` does.
"""

from nmfseg.nnunet.plans import require_nnunet, trainer_folder, write_plans_variant

__all__ = ["require_nnunet", "trainer_folder", "write_plans_variant"]
