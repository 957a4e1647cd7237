"""``nmfseg study``: the paper's comparison (Tables 1–2, Fig. 3) in one resumable command.

Every model is trained on every fold, each fold's validation cases are predicted with that
fold's final checkpoint and evaluated, and the folds are pooled per model (5-fold
cross-validation) into the paper's Table 1: Dice and HD95 per region and averaged, #params,
FLOPs, best in bold, second underlined, paired Wilcoxon tests against a reference model,
the box plots of Fig. 3 and a ``study.json`` manifest.

============ ===================================================================
module       what it holds
============ ===================================================================
``plan``     options, checks, the (model, fold) jobs, their commands, what is done
``run``      running the stages (train, predict, evaluate), progress, manifest
``table``    pooling the folds, #params and FLOPs, writing the table
============ ===================================================================

Import from the submodules (``from nmfseg.study.run import run_study``); this package itself
imports nothing.

Examples::

    >>> from nmfseg.study.plan import parse_folds
    >>> parse_folds("0-4", 5)
    [0, 1, 2, 3, 4]
"""
