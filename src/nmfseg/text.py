"""Text a user types: the one rule for comma lists and whole numbers, the one grammar for
fold lists.

Floor 0 (imports only :mod:`nmfseg.errors`): every comma list nmfseg reads, in an option
(``--models a,b``, ``--folds 0,1``, ``largest:WT,TC``, ``--model-arg channels=8,16``) or a
file, goes through :func:`split_list`, so a gap is refused the same way everywhere; every
list of folds (``--folds 0-4,6``, ``--folds all``) goes through :func:`parse_folds`.
"""

from __future__ import annotations

from nmfseg.errors import ConfigError

__all__ = ["fold_words", "is_number", "parse_folds", "split_list"]

_GAP = "an empty item in the comma list"


def is_number(text: str) -> bool:
    """Whether ``text`` is a whole number ``int`` reads: ASCII digits only (``str.isdigit``
    also takes ``"²"`` and other digits that ``int`` refuses or reads differently).

    Examples::

        >>> is_number("12"), is_number("²"), is_number("٣"), is_number(""), is_number("-1")
        (True, False, False, False, False)
    """
    return text.isascii() and text.isdigit()


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


_FOLDS = "expected fold numbers like 0-4 or 0,2,3, or all"


def fold_words(text: str, option: str = "--folds") -> list[str]:
    """The words of a fold list, unparsed: separated by commas (a gap is refused, as by
    :func:`split_list`) or by spaces (the older ``--folds 0 1 2``).

    Examples::

        >>> fold_words("0-2, 4"), fold_words("0 1 all")
        (['0-2', '4'], ['0', '1', 'all'])
    """
    return [word for item in split_list(text, option) for word in item.split()]


def parse_folds(text: str, option: str = "--folds") -> list[int | str]:
    """The folds a fold list names, in the order given, each once: fold numbers, ranges
    (``0-4``) and ``all``, the ``fold_all`` model trained on every case (nnU-Net's ``-f all``,
    ``nmfseg train --fold all``), never "every fold" (that is no list at all).

    The one grammar of ``--folds`` in every verb (and of ``--fold``, which takes one).

    Raises:
        ConfigError: Naming ``option`` and the text: a word that is not a fold, a range that
            runs backwards, a gap in the comma list.

    Examples::

        >>> parse_folds("0-2,4"), parse_folds("all"), parse_folds("3 1,1")
        ([0, 1, 2, 4], ['all'], [3, 1])
        >>> parse_folds("0-x")
        Traceback (most recent call last):
        ...
        nmfseg.errors.ConfigError: --folds '0-x': expected fold numbers like 0-4 or 0,2,3, or all
    """
    folds: list[int | str] = []
    for word in fold_words(text, option):
        first, dash, last = word.partition("-")
        if word == "all":
            ids: list[int | str] = ["all"]
        elif is_number(first) and (not dash or is_number(last)):
            if dash and int(last) < int(first):
                raise ConfigError(f"{option} {text!r}: the range {word} is empty")
            ids = list(range(int(first), int(last if dash else first) + 1))
        else:
            raise ConfigError(f"{option} {text!r}: {_FOLDS}")
        folds += [k for k in ids if k not in folds]
    return folds
