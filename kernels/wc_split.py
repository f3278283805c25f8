"""Word count, step 1: split a document into normalised words.

Start it with the document's *key* rather than its text, so the VM reads the value from
Redis just before the step runs::

    redis-cli SET doc:1 "The quick brown fox jumps over the lazy dog. The end."
    pyrecks run 'wc_split("@doc:1")'
"""

import re

from pyrecks.kernel import call

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
STOPWORDS = frozenset({"a", "an", "and", "of", "or", "the", "to"})


def wc_split(text: str, min_length: int = 1) -> str:
    words = [w.lower() for w in WORD.findall(text)]
    kept = [w for w in words if len(w) >= min_length and w not in STOPWORDS]
    return call("wc_count", kept, len(words))
