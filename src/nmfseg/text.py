"""Text a user types: the one rule for comma lists.

Floor 0 (imports only :mod:`nmfseg.errors`): every comma list nmfseg reads, in an option
(``--models a,b``, ``--folds 0,1``, ``largest:WT,TC``, ``--model-arg channels=8,16``) or a
file, goes through :func:`split_list`, so a gap is refused the same way everywhere.
"""

from __future__ import annotations

from nmfseg.errors import ConfigError

__all__ = ["split_list"]

_GAP = "an empty item in the comma list"


def split_list(text: str, option: str, shown: str | None = None) -> list[str]:
    """The items of a comma list given to ``option``, stripped; a gap is an error.

    The one rule for every comma list nmfseg reads (``--models a,b``, ``largest:WT,TC``,
    ``--folds 0,1``...): an empty item (``a,,b``, a leading or trailing comma, or nothing at
    all) is refused rather than dropped, as a typo it may hide.

    Args:
        text: The list.
        option: The option it was given to.
        shown: What the error quotes after the option (default: ``text``), when the list is
            part of a longer word (``largest:WT,TC``).

    Raises:
        ConfigError: Naming ``option`` and the text, if an item is empty.

    Examples::

        >>> split_list(" WT, TC", "--postprocess largest")
        ['WT', 'TC']
        >>> split_list("a,,b", "--models")
        Traceback (most recent call last):
        ...
        nmfseg.errors.ConfigError: --models 'a,,b': an empty item in the comma list
    """
    items = [item.strip() for item in str(text).split(",")]
    if not all(items):
        raise ConfigError(f"{option} {text if shown is None else shown!r}: {_GAP}")
    return items
