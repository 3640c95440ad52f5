"""Scoring: prepared pixels -> image encoder -> each bundle's trust head, gate and threshold -> decisions.

The third stage of a frame's path (ingest -> decode -> scoring -> publish). Engines and their
providers (:mod:`.engines`, :mod:`.onnx_engine`, :mod:`.tensorrt_engine`, :mod:`.ort_providers`,
:mod:`.gpu_info`), the image towers (:mod:`.towers`), the out-of-distribution gate (:mod:`.ood_gate`),
one bundle's scorer (:mod:`.scorer`) and many cameras' bundles over one encoder (:mod:`.routing`).
Imports the shared vocabulary and decode, nothing of ingest.
"""
