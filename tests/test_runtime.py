"""The allocator setting: applied once on glibc, skipped when switched off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = "import anomalens.runtime as r; print(r.keep_freed_memory(), r.keep_freed_memory())"


def _run(switch: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "ANOMALENS_MALLOC_TUNING"}
    if switch is not None:
        env["ANOMALENS_MALLOC_TUNING"] = switch
    done = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_applies_once_and_honours_the_switch() -> None:
    assert _run(None) == ["True", "True"]
    assert _run("0") == ["False", "False"]
