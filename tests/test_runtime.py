"""The allocator setting: applied once on glibc, skipped when switched off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anomalens.backbones.base import AUTO_PRECISION_ENV

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


def test_auto_precision_follows_the_cpu(monkeypatch):
    import anomalens.runtime as runtime
    from anomalens.backbones.base import resolve_precision
    from anomalens.backbones.registry import load_backbone
    from anomalens.neighbors import MemoryBank

    monkeypatch.delenv(AUTO_PRECISION_ENV)
    for isa, want in (("AVX512-BF16", "bf16"), ("AMX", "bf16"), ("AVX2", "fp32")):
        monkeypatch.setattr(runtime, "cpu_isa", lambda isa=isa: isa)
        assert runtime.native_bf16() is (want == "bf16")
        assert resolve_precision("auto") == want
        assert resolve_precision("fp32") == "fp32"
        assert resolve_precision("bf16") == "bf16"
        assert (
            load_backbone("efficientnet-lite0", image_size=64, precision="auto").precision == want
        )
        assert MemoryBank(torch.zeros(3, 2)).precision == want
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        resolve_precision("fp16")
    # the environment variable fixes what "auto" means, on any CPU; nothing else
    for forced in ("fp32", "bf16"):
        monkeypatch.setenv(AUTO_PRECISION_ENV, forced)
        assert resolve_precision("auto") == forced
        assert resolve_precision("fp32") == "fp32"
        assert MemoryBank(torch.zeros(3, 2)).precision == forced
    monkeypatch.setenv(AUTO_PRECISION_ENV, "fp16")
    with pytest.raises(ValueError, match="ANOMALENS_AUTO_PRECISION must be one of fp32, bf16"):
        resolve_precision("auto")


def test_cpu_isa_names_the_bf16_path():
    import anomalens.runtime as runtime

    isa = runtime.cpu_isa()
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text(encoding="utf-8") if cpuinfo.exists() else ""
    if "amx_bf16" in flags:
        assert isa == "AMX"
    elif "avx512_bf16" in flags:
        assert isa == "AVX512-BF16"
    else:
        assert isa == str(torch.backends.cpu.get_cpu_capability())
