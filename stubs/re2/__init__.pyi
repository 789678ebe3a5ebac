# What layerindex.regex uses of google-re2, which ships no type hints.
from re2._re2 import RE2

class Options(RE2.Options): ...
