"""Pre-rename home of :mod:`dl_utils.dinoal.caption` (``Prompt`` is now ``Caption``,
``parse_prompt`` ``parse_caption``).

Kept so notebooks and modules written against the old names (``from dl_utils.dinoal.prompts import
parse_prompt``) still import; new code imports from :mod:`dl_utils.dinoal.caption`.
"""

from .caption import (
    ON_UNKNOWN,
    Caption,
    LabelMapper,
    PhraseLabel,
    Prompt,
    UnknownPhraseWarning,
    parse_caption,
    parse_prompt,
    phrase_index_of_tokens,
    phrase_scores,
)

__all__ = [
    "ON_UNKNOWN",
    "Caption",
    "LabelMapper",
    "PhraseLabel",
    "Prompt",
    "UnknownPhraseWarning",
    "parse_caption",
    "parse_prompt",
    "phrase_index_of_tokens",
    "phrase_scores",
]
