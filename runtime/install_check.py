"""``python -m trustvlm.runtime.install_check``: exactly one ONNX Runtime installed, or one line and exit 1.

``make setup`` runs it after installing; on a Jetson run it after installing JetPack's
onnxruntime-gpu wheel and the project.
"""

from __future__ import annotations

import sys

from trustvlm.runtime.scoring.gpu_info import check_onnxruntime_install, onnxruntime_distributions


def main() -> int:
    problem = check_onnxruntime_install()
    if problem:
        print(f"install check: {problem}", file=sys.stderr)
        return 1
    import onnxruntime as ort  # noqa: PLC0415 - after the check, so a broken install fails with the line above

    print(f"install check: {onnxruntime_distributions()[0]} {ort.__version__}, providers "
          f"{', '.join(ort.get_available_providers())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
