"""The library versions the code needs, checked at start-up with a clear message.

Older versions fail later and obscurely: transformers before 5.24 has no `cache=` forward
argument (our decoder passes its KV buffers with it; `activation_checkpointing_enable`
arrived in 5.23), and peft before 0.18 does not import with transformers 5.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

from mfsi.errors import ConfigError

MINIMUM = {"transformers": "5.24.0", "peft": "0.18.0"}


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
            f"installed {', '.join(problems)}: `pip install -r requirements.txt` installs versions that work"
        )
