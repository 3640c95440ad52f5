"""What ran the benchmarks: CPU, cores, instruction sets that matter, memory, versions, date, load.

Read from ``/proc`` on Linux (fields stay empty elsewhere); library versions from the installed
distributions. Noise: the load average at the start says whether the machine was quiet (at the
end it includes the benchmark itself), and :func:`cpu_share_of_others` says how much CPU time
other processes and the hypervisor took while each step ran.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from trustvlm.contract.manifest import installed_versions

LIBRARIES = ("numpy", "torch", "onnxruntime", "onnxruntime-gpu", "onnx", "open_clip_torch", "pyzmq", "opencv-python-headless",
             "tensorrt")
#: CPU flags that decide which kernels run: fp32 vector width, int8 dot products, bf16/AMX.
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


@dataclass(frozen=True)
class MachineInfo:
    """The machine and software of a benchmark run."""

    cpu_model: str
    logical_cpus: int
    cpu_flags: tuple[str, ...]
    memory_gib: float
    os: str
    python: str
    libraries: dict[str, str]
    date_utc: str
    git_commit: str
    load_average: tuple[float, float, float]
    gpus: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return asdict(self)

    def int8_kernel_note(self) -> str:
        """Which int8 dot-product instructions this CPU has (what ONNX Runtime's int8 kernels use)."""
        if "amx_int8" in self.cpu_flags:
            return "AMX int8"
        if "avx512_vnni" in self.cpu_flags or "avx_vnni" in self.cpu_flags:
            return "VNNI"
        if "avx512f" in self.cpu_flags:
            return "AVX-512 without VNNI"
        if "avx2" in self.cpu_flags:
            return "AVX2 without VNNI"
        return "no AVX2"


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, tuple[str, ...]]:
    """(model name, flags of interest present) from /proc/cpuinfo; ("unknown", ()) when unreadable."""
    try:
        text = path.read_text()
    except OSError:
        return platform.processor() or "unknown", ()
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, tuple(flag for flag in FLAGS_OF_INTEREST if flag in flags)


def read_memory_gib(path: Path = Path("/proc/meminfo")) -> float:
    """Total memory in GiB (NaN when unreadable)."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return float("nan")


@dataclass(frozen=True)
class CpuTimes:
    """Machine-wide CPU time (from /proc/stat) and this process tree's (self + waited children), in ticks."""

    total: int
    busy: int
    steal: int
    own: int


def read_cpu_times(stat: Path = Path("/proc/stat"), self_stat: Path = Path("/proc/self/stat")) -> CpuTimes | None:
    """A snapshot of CPU times; None where /proc is not readable (not Linux)."""
    try:
        fields_ = [int(v) for v in stat.read_text().splitlines()[0].split()[1:9]]
        user, nice, system, idle, iowait, irq, softirq, steal = fields_
        own_fields = self_stat.read_text().rsplit(")", 1)[1].split()
        own = sum(int(v) for v in own_fields[11:15])  # utime, stime, cutime, cstime
    except (OSError, ValueError, IndexError):
        return None
    return CpuTimes(total=sum(fields_), busy=user + nice + system + irq + softirq, steal=steal, own=own)


def cpu_share_of_others(start: CpuTimes | None, end: CpuTimes | None) -> dict[str, float] | None:
    """Percent of the machine's CPU time between two snapshots used by other processes, and stolen by the hypervisor.

    "Other processes" is machine busy time minus this process tree's own (child processes count once
    they have been waited for); it also holds kernel work done on our behalf, so a few percent is
    normal. None without both snapshots.
    """
    if start is None or end is None or end.total <= start.total:
        return None
    total = end.total - start.total
    others = (end.busy - start.busy) - (end.own - start.own)
    return {"others_percent": max(0.0, 100.0 * others / total), "steal_percent": 100.0 * (end.steal - start.steal) / total}


def load_average() -> tuple[float, float, float]:
    """1-, 5- and 15-minute load averages (NaN where the OS has none)."""
    try:
        return tuple(float(v) for v in os.getloadavg())
    except OSError:
        return (float("nan"),) * 3


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries whose speed the benchmarks measure."""
    return installed_versions(LIBRARIES)


def git_commit(repo: Path) -> str:
    """Short commit of `repo`, with ``+dirty`` when the tree has changes; ``unknown`` without git."""
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def describe_machine(repo: Path | None = None, gpus: tuple[str, ...] = ()) -> MachineInfo:
    """Everything :class:`MachineInfo` holds, read now."""
    model, flags = read_cpuinfo()
    return MachineInfo(
        cpu_model=model, logical_cpus=os.cpu_count() or 1, cpu_flags=flags, memory_gib=read_memory_gib(),
        os=f"{platform.system()} {platform.release()}", python=platform.python_version(),
        libraries=library_versions(), date_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        git_commit=git_commit(repo) if repo else "unknown", load_average=load_average(), gpus=gpus)
