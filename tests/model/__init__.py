"""The model-based test of rangefs (tests/test_model.py) and its parts.

    origin.py      an in-process, versioned HTTP origin (an httpx transport) with switchable behaviours
    content.py     the bytes of every version, as a function of (file, version, size, shape)
    harness.py     engine construction (the one place that calls rangefs' constructors) and the trio loop
    model.py       the reference model: which answers are right, which errors are explained
    strategies.py  what hypothesis draws

Hypothesis profiles (applied to the model test only, never loaded globally), chosen with the environment
variable ``RANGEFS_MODEL_PROFILE``:

    ci    the default: bounded, about two minutes
    long  many more and longer cases, for a run in the background:
          RANGEFS_MODEL_PROFILE=long pytest tests/test_model.py --hypothesis-seed=N
    find  as long, but stops at the first failure without shrinking it or using the example database:
          how long a bug takes to find (RANGEFS_MODEL_AVOID, see test_model.py, hides the others)
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
PROFILES = {
    "ci": settings(max_examples=120, stateful_step_count=30, **_COMMON),  # type: ignore[arg-type]
    "long": settings(max_examples=3000, stateful_step_count=60, **_COMMON),  # type: ignore[arg-type]
    "find": settings(
        max_examples=3000,
        stateful_step_count=60,
        phases=[Phase.generate],
        database=None,
        report_multiple_bugs=False,
        **_COMMON,  # type: ignore[arg-type]
    ),
}


def model_settings() -> settings:
    name = os.environ.get("RANGEFS_MODEL_PROFILE", "ci")
    if name not in PROFILES:
        raise ValueError(f"RANGEFS_MODEL_PROFILE={name!r}: choose one of {', '.join(PROFILES)}")
    return PROFILES[name]
