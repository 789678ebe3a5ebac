# google-re2's extension module, as far as layerindex.regex calls it.
class RE2:
    class Options:
        log_errors: bool
        never_capture: bool

    class Anchor:
        UNANCHORED: RE2.Anchor
        ANCHOR_START: RE2.Anchor
        ANCHOR_BOTH: RE2.Anchor

    def __init__(self, pattern: bytes, options: RE2.Options) -> None: ...
    def ok(self) -> bool: ...
    def error(self) -> bytes: ...
    def Match(
        self, anchor: RE2.Anchor, text: bytes, pos: int, endpos: int
    ) -> list[tuple[int, int]]: ...
