"""Reading what ran the benchmarks."""

from __future__ import annotations

import pytest

from trustvlm.benchmarks.machine import describe_machine, read_cpuinfo

pytestmark = pytest.mark.timeout(30)


def test_read_cpuinfo_keeps_the_model_and_the_flags_of_interest(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni\n"
                       "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu\n")
    assert read_cpuinfo(cpuinfo) == ("Test CPU 9000", ("avx2", "fma", "avx512f", "avx512_vnni"))


def test_read_cpuinfo_without_the_file_says_unknown(tmp_path):
    model, flags = read_cpuinfo(tmp_path / "missing")
    assert flags == () and model


def test_describe_machine_round_trips_to_a_dict():
    info = describe_machine()
    data = info.to_dict()
    assert data["logical_cpus"] >= 1 and "onnxruntime" in data["libraries"]
    assert info.int8_kernel_note() in ("AMX int8", "VNNI", "AVX-512 without VNNI", "AVX2 without VNNI", "no AVX2")


def test_cpu_share_of_others_subtracts_this_process_tree(tmp_path):
    # Given two snapshots 1000 ticks apart: 600 busy ticks, 400 of them ours, 50 stolen
    from trustvlm.benchmarks.machine import CpuTimes, cpu_share_of_others

    start = CpuTimes(total=10_000, busy=2_000, steal=100, own=500)
    end = CpuTimes(total=11_000, busy=2_600, steal=150, own=900)
    # Then others took (600 - 400) / 1000 = 20% and the hypervisor 5%
    assert cpu_share_of_others(start, end) == {"others_percent": 20.0, "steal_percent": 5.0}
    assert cpu_share_of_others(None, end) is None


def test_read_cpu_times_parses_proc_stat_and_self_stat(tmp_path):
    from trustvlm.benchmarks.machine import read_cpu_times

    stat, self_stat = tmp_path / "stat", tmp_path / "self_stat"
    stat.write_text("cpu  100 5 20 1000 7 1 2 3 0 0\ncpu0 50 2 10 500 3 0 1 1 0 0\n")
    # comm may hold spaces and parentheses; utime, stime, cutime, cstime are fields 14-17
    self_stat.write_text("42 (python (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 11 12 13 14 20 0 1 0\n")
    times = read_cpu_times(stat, self_stat)
    assert (times.total, times.busy, times.steal, times.own) == (1138, 128, 3, 50)
    assert read_cpu_times(tmp_path / "missing", self_stat) is None
