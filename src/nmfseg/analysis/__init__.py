"""What a trained model shows, what it can drop, how to clean its output: ``nmfseg explain``,
``nmfseg ablate`` and ``nmfseg postprocess-search``.

- :mod:`~nmfseg.analysis.maps`: NMF component maps of a whole image on its own grid, blended
  over the sliding window like predictions (paper Fig. 6).
- :mod:`~nmfseg.analysis.explain`: one case → a NIfTI per (layer, head, component), a panel
  and ``components.json``.
- :mod:`~nmfseg.analysis.ablate`: inference-time ablations on a fold's validation cases (NMF
  layers kept or removed, iterations, rank and solver; paper §4.5, Fig. 8), with the fastest
  settings within one Dice point of the unmodified model.
- :mod:`~nmfseg.analysis.figures`: the Fig. 6 panel and the Fig. 8 panels.
- :mod:`~nmfseg.analysis.postprocess`: the post-processing that raises a fold's mean Dice on
  its validation cases, saved with the run for ``nmfseg predict --postprocess auto``.
- :mod:`~nmfseg.analysis.runs`: which fold of a run ``explain`` and ``ablate`` use, and its
  validation cases.

The floor sits on inference (the same preprocessing and sliding window as ``nmfseg predict``,
through :class:`~nmfseg.inference.predictor.Predictor`) and evaluation (Dice).
"""
