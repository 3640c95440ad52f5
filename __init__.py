"""trustvlm-edge: frame-by-frame trust for vision-language model predictions.

Packages:
    export       turns VLM image/text encoders into ONNX and TensorRT artifacts (needs torch).
    calibration  caches text/image prototypes and chooses accept thresholds.
    runtime      scores frames against cached prototypes (no torch).
    pipelines    camera/video sources, reference controllers and demos.
    models       the model registry (data) and the embedded demo checkpoint.
    data         dataset readers (Fashion-MNIST, image folders).
    training     the trainer of small CLIP-style domain models.
"""

__version__ = "0.1.0"
