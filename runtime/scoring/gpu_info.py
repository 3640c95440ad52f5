"""Name the CUDA GPU without torch, and check the TensorRT and ONNX Runtime installs (no torch).

The device runtime has neither torch nor a CUDA Python binding, so the GPU is asked through the
CUDA driver library itself (``libcuda.so.1``, part of every NVIDIA driver and of JetPack), with
ctypes: ``cuInit``, ``cuDeviceGet``, ``cuDeviceGetName`` and the compute capability attributes.
Device 0 is the first of ``CUDA_VISIBLE_DEVICES``, as for TensorRT and ONNX Runtime.
"""

from __future__ import annotations

import ctypes
import importlib.metadata

#: The oldest TensorRT this project builds and runs engines with: TensorRT 10 made explicit batch
#: the only network mode (``create_network(0)``) and brought the name-based I/O tensor API.
MIN_TENSORRT_MAJOR = 10
#: The ONNX Runtime distributions that install the same ``onnxruntime`` module (they overwrite each other).
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                     "onnxruntime-qnn", "onnxruntime-training")
_CAPABILITY_MAJOR, _CAPABILITY_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
_DRIVER_LIBRARIES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")


class GpuUnavailableError(RuntimeError):
    """No CUDA driver or no visible CUDA device (the message is one line)."""


def _load_driver():
    errors = []
    for name in _DRIVER_LIBRARIES:
        try:
            return ctypes.CDLL(name)
        except OSError as error:
            errors.append(str(error))
    raise GpuUnavailableError(f"no NVIDIA driver here (cannot load {' or '.join(_DRIVER_LIBRARIES[:2])}): "
                              "the GPU path needs an NVIDIA GPU and its driver")


def describe_cuda_device(load_driver=_load_driver) -> tuple[str, str]:
    """(name, 'smXY') of CUDA device 0, from the driver library.

    Raises:
        GpuUnavailableError: No driver library, or the driver sees no device.
    """
    driver = load_driver()
    device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    status = driver.cuInit(0)
    if status != 0:
        raise GpuUnavailableError(f"the CUDA driver found no usable GPU (cuInit returned {status}; "
                                  "100 = no device, 999 = unknown error)")
    for call in (lambda: driver.cuDeviceGet(ctypes.byref(device), 0),
                 lambda: driver.cuDeviceGetName(name, len(name), device),
                 lambda: driver.cuDeviceGetAttribute(ctypes.byref(major), _CAPABILITY_MAJOR, device),
                 lambda: driver.cuDeviceGetAttribute(ctypes.byref(minor), _CAPABILITY_MINOR, device)):
        status = call()
        if status != 0:
            raise GpuUnavailableError(f"the CUDA driver could not describe device 0 (error {status})")
    return name.value.decode(errors="replace"), f"sm{major.value}{minor.value}"


def tensorrt_major(version: str) -> int | None:
    """The major version of a TensorRT version string ('10.3.0' -> 10), None when unreadable."""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def check_tensorrt_version(version: str) -> str | None:
    """None when TensorRT `version` is supported, else the one line that says why not."""
    major = tensorrt_major(version)
    if major is None or major < MIN_TENSORRT_MAJOR:
        return (f"TensorRT {version} is too old: this project needs TensorRT {MIN_TENSORRT_MAJOR}.x (explicit-batch "
                f"networks, name-based I/O tensors); install `trustvlm-edge[trt]` or JetPack 6")
    return None


def onnxruntime_distributions(distributions=None) -> list[str]:
    """The installed distributions that provide the ``onnxruntime`` module (normally exactly one)."""
    found = distributions if distributions is not None else [d.metadata["Name"] for d in
                                                             importlib.metadata.distributions()]
    wanted = set(ORT_DISTRIBUTIONS)
    return sorted({name.lower().replace("_", "-") for name in found if name} & wanted)


def check_onnxruntime_install(distributions=None) -> str | None:
    """None when exactly one ONNX Runtime distribution is installed, else the one line that says what to do."""
    found = onnxruntime_distributions(distributions)
    if len(found) == 1:
        return None
    if not found:
        return ("no ONNX Runtime is installed: `pip install -e '.[cpu]'` on a CPU machine, `.[gpu]` on an x86 "
                "CUDA machine, or JetPack's onnxruntime-gpu wheel on a Jetson")
    return (f"{' and '.join(found)} are installed side by side; they overwrite each other's files and the CUDA "
            f"provider can vanish: `pip uninstall -y {' '.join(found)}`, then install exactly one")
