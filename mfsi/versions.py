"""The library versions the code needs, checked at start-up with a clear message.

Older versions fail later and obscurely: peft before 0.18 does not import with transformers 5.
transformers 5.19.0 is the oldest the suite has passed on (and the one requirements.txt pins,
as vLLM's CPU build needs < 5.20); on 5.24 the decoder's and training's tests pass too.
The code uses the names both accept (`past_key_values=`, `gradient_checkpointing_enable`),
not 5.24's `cache=` and `activation_checkpointing_*`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

from mfsi.errors import ConfigError

MINIMUM = {"transformers": "5.19.0", "peft": "0.18.0"}


def check_versions(minimum: dict[str, str] = MINIMUM) -> None:
    """Raise ConfigError naming every package older than its minimum (or missing)."""
    problems = []
    for package, needed in minimum.items():
        try:
            installed = version(package)
        except PackageNotFoundError:
            installed = None
        if installed is None or Version(installed) < Version(needed):
            problems.append(f"{package} {installed or '(not installed)'} (needs >= {needed})")
    if problems:
        raise ConfigError(
            f"installed {', '.join(problems)}: "
            "`make setup` (or `pip install -e .`) installs versions that work"
        )
