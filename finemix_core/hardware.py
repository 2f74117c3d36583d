"""What the machine runs fast: one question, asked by scoring (the lab's bf16 path, `finemix bench`) and by recovery
(`RecoveryConfig.precision` "auto"). No finemix imports, so any module can ask it without an import cycle."""

from __future__ import annotations

from pathlib import Path

import torch


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 is fast here: a GPU that supports it, or a CPU with AVX-512 BF16 / AMX (elsewhere it is emulated:
    on an AVX2-only CPU a bf16 recovery step ran ~10× slower than fp32, docs/recovery.md)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.backends, "mkldnn", None) and torch.backends.mkldnn.is_available()) and _cpu_has_bf16()


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
