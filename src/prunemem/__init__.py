"""prunemem: does pruning make a language model forget what it memorized, and at what cost?"""

__version__ = "0.1.0"
