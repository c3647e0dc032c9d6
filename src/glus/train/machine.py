"""What a run computed on: the processor and the kernels torch chose for it.

Training is bit-for-bit deterministic on one machine, but the CPU kernels torch and MKL pick depend on the
processor (AVX2 or AVX-512, Intel or AMD), and so does the order of floating-point sums. Two machines then give
runs that drift apart from the first steps on, like two seeds: the embedded recipe gave test J&F 46.65 on one
machine and 43.20 on another (``docs/demo.md``). A run records its machine so that such a difference can be told
from a change in the code.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path
from typing import Any

import torch

MACHINE_FILE = "machine.json"  # in a run folder: one entry per start (a resume adds one)
TRAINING_MACHINE_FILE = "training_machine.json"  # the same record, in the model folder the run exported

# The fields that decide which kernels run; the thread count changes how reductions are split.
KERNEL_FIELDS = ("processor", "torch", "cpu_capability", "blas", "threads", "cuda_device")


def _processor() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(errors="replace"), re.MULTILINE)
        if found:
            return found.group(1).strip()
    return platform.processor() or platform.machine()


def _blas() -> str:
    """The BLAS torch was built with and its version, as ``torch.__config__.show()`` names it."""
    shown = torch.__config__.show()
    for pattern in (r"(Intel\(R\) (?:oneAPI )?Math Kernel Library Version [^\n]+)", r"BLAS_INFO=([^,\s]+)"):
        found = re.search(pattern, shown)
        if found:
            return found.group(1).strip()
    return "unknown"


def describe_machine(device: torch.device | str | None = None) -> dict[str, Any]:
    """The processor, torch version, CPU capability, BLAS, thread count and (on CUDA) the GPU of this process."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    return {
        "processor": _processor(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": _blas(),
        "threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
    }


def read_machines(path: str | Path) -> list[dict[str, Any]] | None:
    """The machines of a record (a run's ``machine.json``, a model's ``training_machine.json``), one per start of
    the run; None when there is no record."""
    from glus.errors import GLUSError
    from glus.fileio import read_json_object

    path = Path(path)
    if not path.is_file():
        return None
    machines = read_json_object(path, "machine record").get("machines")
    if not isinstance(machines, list) or not all(isinstance(m, dict) and "from_step" in m for m in machines):
        raise GLUSError("machine record: expected {\"machines\": [{\"from_step\": ..., ...}, ...]}", path)
    return machines


def kernel_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The kernel-deciding fields in which two machine descriptions differ (``field: a -> b``)."""
    return [f"{field}: {a.get(field)} -> {b.get(field)}" for field in KERNEL_FIELDS if a.get(field) != b.get(field)]
