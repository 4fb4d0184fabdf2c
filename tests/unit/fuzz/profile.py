"""The hypothesis settings of the fuzz tests: the profile ``imgov-fuzz``.

Every fuzz test is decorated with :data:`FUZZ` rather than loading the profile, so the
other property tests of the suite keep their own settings. The number of examples per
target is ``IMGOV_FUZZ_EXAMPLES``, else :data:`CI_EXAMPLES`: enough for the normal test
run to stay under about a minute on two cores; ``make fuzz`` raises it. A target that
costs more per example than the others runs a share of it (:func:`fuzz_settings`).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["CI_EXAMPLES", "EXAMPLES", "FUZZ", "fuzz_settings"]

CI_EXAMPLES = 500
"""Examples per target in the normal test run (about 30 s for every target)."""
EXAMPLES = int(os.environ.get("IMGOV_FUZZ_EXAMPLES", CI_EXAMPLES))

settings.register_profile(
    "imgov-fuzz",
    max_examples=EXAMPLES,
    deadline=None,  # examples differ in cost by orders of magnitude (a replay, a byte)
    suppress_health_check=list(HealthCheck),  # slow and large inputs are the point here
    print_blob=True,
)
FUZZ = settings.get_profile("imgov-fuzz")


def fuzz_settings(share: float = 1.0) -> settings:
    """The fuzz profile with ``share`` of its examples (for a target that costs more)."""
    return settings(FUZZ, max_examples=max(10, int(EXAMPLES * share)))
