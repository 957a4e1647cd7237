"""Training: the paper's recipe (§4.2, Appendix A) as a plain PyTorch loop.

============== ==============================================================
module         what it holds
============== ==============================================================
``config``     the YAML recipes (``nmfseg/configs/*.yaml``), overrides, validation
``rules``      what each config key may be, one declaration per key
``losses``     soft Dice (squared denominator) + BCE over deep-supervision outputs
``schedule``   the learning rate: linear warm-up, then cosine to 0
``data``       preprocessed case cache, the deterministic patch stream
``setup``      :func:`prepare_run`: every check before anything is written
``trainer``    :class:`Trainer` (the loop and its hooks), :func:`run_training`: checkpoints,
               resume, DDP
``validation`` the validation cases scored during training, ``validation/summary.json``
``checkpoint`` the training part of a checkpoint, RNG state (reading: :mod:`nmfseg.models`)
``distributed`` ``torchrun`` / DDP process group
``cores``      a process's compute threads and data workers (:func:`share_cores`)
``progress``   ``log.csv`` and ``progress.png``
============== ==============================================================

Import from the submodules (``from nmfseg.training.setup import prepare_run``); this package
itself imports nothing.

Examples::

    >>> from nmfseg.training.setup import prepare_run
    >>> from nmfseg.training.trainer import run_training
    >>> callable(prepare_run) and callable(run_training)
    True
"""
