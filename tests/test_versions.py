"""The start-up check of the library versions the code needs."""

import pytest

from mfsi.errors import ConfigError
from mfsi.versions import check_versions


def test_too_old_libraries_are_named_with_what_is_needed():
    check_versions()  # the installed ones are new enough
    with pytest.raises(ConfigError, match=r"transformers 5\.\d+\.\d+ \(needs >= 99\.0\).*pip install -e \."):
        check_versions({"transformers": "99.0", "peft": "0.1"})
    with pytest.raises(ConfigError, match=r"no-such-package \(not installed\)"):
        check_versions({"no-such-package": "1.0"})
