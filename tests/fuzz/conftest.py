"""Hypothesis settings for the fuzz tests: bounded for CI, longer on request.

The default profile, ``ci``, keeps the whole directory well within a minute on two cores (about 12 s when they
are idle); ``HYPOTHESIS_PROFILE=long`` runs forty times as many examples, for a local search. Examples are random
on every run (a failure prints the blob that reproduces it, for ``@reproduce_failure``). Nothing is written into
the clone: no example database, and Hypothesis' own caches go under the system's temporary directory instead of
``.hypothesis/``.
"""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), f"pybuild-hypothesis-{os.getuid()}"))

_COMMON = {
    "deadline": None,  # no timed assertions: a slow machine is not a failure
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=500, **_COMMON)
settings.register_profile("long", max_examples=20_000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
