"""Platforms ("linux/arm64/v8") and how containerd matches them.

Architectures have aliases (x86_64 is amd64) and some variants are implied (arm64 means v8, arm
means v7), so "linux/arm64" and an index entry {"architecture": "arm64", "variant": "v8"} match.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from layerindex.errors import UsageError

# containerd platforms.NormalizeArch: names other tools use for the same CPU.
_ARCH_ALIASES = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "aarch64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", None),
}
# A variant that is the default for its architecture may be written or left out.
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7", "amd64": "v1"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None

    def __str__(self) -> str:
        """ "linux/amd64", "linux/arm64/v8"."""
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text

    def normalized(self) -> Platform:
        """Aliases resolved and the default variant filled in, for comparing."""
        architecture, variant = self.architecture.lower(), self.variant
        if architecture in _ARCH_ALIASES:
            architecture, implied = _ARCH_ALIASES[architecture]
            variant = variant or implied
        if variant:
            variant = variant.lower()
            if architecture == "arm64" and variant == "8":  # "arm64/8" is how some write v8
                variant = "v8"
        variant = variant or _DEFAULT_VARIANT.get(architecture)
        return Platform(self.os.lower(), architecture, variant, self.os_version)

    def matches(self, other: Platform) -> bool:
        """containerd's exact matcher: same os, architecture and (defaulted) variant."""
        mine, theirs = self.normalized(), other.normalized()
        return (mine.os, mine.architecture, mine.variant) == (
            theirs.os,
            theirs.architecture,
            theirs.variant,
        )

    @property
    def unknown(self) -> bool:
        """BuildKit's attestation manifests carry platform unknown/unknown."""
        return self.os == "unknown" and self.architecture == "unknown"


def parse_platform(spec: str) -> Platform:
    """ "os/arch[/variant]" → Platform; a malformed spec is a UsageError."""
    parts = spec.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(
            f"invalid platform {spec!r}: expected os/arch[/variant], e.g. linux/amd64 or "
            "linux/arm64/v8, or 'all'"
        )
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


DEFAULT_PLATFORM = Platform("linux", "amd64")  # index's, skopeo's and dive's default
T = TypeVar("T")


def names_platform(spec: str, platform: str) -> bool:
    """Whether ``--platform SPEC`` names an indexed image's ``platform`` ("linux/arm64/v8"):
    the grammar of ``index`` ("all", or comma-separated os/arch[/variant]) and containerd's
    matcher, for every command alike."""
    if spec.strip() == "all":
        return True
    image = parse_platform(platform)
    return any(parse_platform(part).matches(image) for part in spec.split(","))


def pick_platforms(
    spec: str | None, items: Sequence[T], platform_of: Callable[[T], str]
) -> list[T]:
    """The items ``--platform SPEC`` names; without SPEC, linux/amd64 when it is one of several
    (the default of index, skopeo and dive), else all of them."""
    if spec is not None:
        return [item for item in items if names_platform(spec, platform_of(item))]
    default = [item for item in items if names_platform(str(DEFAULT_PLATFORM), platform_of(item))]
    return default if len(items) > 1 and len(default) == 1 else list(items)
