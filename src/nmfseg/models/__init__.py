"""Networks and their registry.

Importing this package registers every preset: the paper's Factorizers
(``{global,local,swin}_factorizer_{brats,isles}``) and the ``segresnet`` baseline.
"""

from nmfseg.models._registry import create_model, list_models, model_info, register_model
from nmfseg.models.factorizer import Factorizer, FactorizerBlock
from nmfseg.models.segresnet import SegResNet

__all__ = [
    "Factorizer",
    "FactorizerBlock",
    "SegResNet",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]
