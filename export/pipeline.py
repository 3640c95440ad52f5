"""The export stage: registry entry -> ONNX encoders (+ fp16, + TensorRT engines) -> manifest.

CLIP models export their image and text encoders; image encoders (registry kind "image-encoder",
the auxiliary image-prototype encoders such as DINOv2) export the image encoder alone, gated on
image cosines only (no prompts, no zero-shot agreement). ``precision="int8"`` adds an int8 image
encoder quantized by ONNX Runtime (:mod:`trustvlm.export.quantize`, its own gates); the text
encoder stays fp32.

Everything is written into a staging folder next to the output and moved into place only after
every parity gate passed, manifest last: a failed export leaves no half-written artifact. The
folder is ``<output_root>/<name>``: the registry name, or the name of weights trained on other data
(:mod:`trustvlm.export.naming`).
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from trustvlm.contract.files import sha256_file, stage_beside, write_json_atomic
from trustvlm.contract.manifest import MANIFEST_NAME, PRECISIONS, TOWERS, encoder_file_name
from trustvlm.data.fashion_mnist import load_split, to_rgb
from trustvlm.export import onnx_export, parity, quantize, text_tokens
from trustvlm.export.errors import ExportError
from trustvlm.export.manifest import build_manifest
from trustvlm.export.loaded_model import LoadedModel
from trustvlm.export.model_loading import load_model
from trustvlm.export.naming import ArtifactNameError, artifact_name
from trustvlm.export.preflight import check_export
from trustvlm.export.torch_wrappers import EOT_TOKEN_ID
from trustvlm.models.prompts import build_prompts, get_templates
from trustvlm.models.registry import ModelSpec
from trustvlm.runtime.scoring.onnx_engine import OnnxEncoder
from trustvlm.runtime.decode.preprocess import preprocess_batch

FORMATS = ("onnx", "engine")
#: What an export can write: the precisions the runtime runs (int8: image encoder only, for CPUs).
EXPORT_PRECISIONS = PRECISIONS
PARITY_IMAGES = 200


@dataclass
class ExportRequest:
    """What to export and where."""

    model: str
    precision: str = "fp32"
    format: str = "onnx"
    weights: str | None = None
    output_root: Path = Path("artifacts")
    parity_images: int = PARITY_IMAGES
    trust_gate_images: int | None = None  # int8 trust gate: first N test images (None: all 10,000)
    tokenizer_dir: Path | None = None     # a local Hugging Face tokenizer folder (SigLIP), bundled into the export
    name: str | None = None               # the export's name (folder, manifest, reports); see export/naming.py

    def __post_init__(self) -> None:
        if self.precision not in EXPORT_PRECISIONS:
            raise ExportError(f"precision should be one of {EXPORT_PRECISIONS}, but got {self.precision!r}")
        if self.format not in FORMATS:
            raise ExportError(f"format should be one of {FORMATS}, but got {self.format!r}")
        if self.precision == "int8" and self.format == "engine":
            raise ExportError("precision int8 is for ONNX Runtime's CPU provider; TensorRT engines are built "
                              "from fp32 or fp16 (use --precision fp16 --format engine)")

    @property
    def output_dir(self) -> Path:
        return Path(self.output_root) / (self.name or self.model)


@dataclass
class ExportResult:
    """What an export wrote and measured."""

    output_dir: Path
    manifest: dict
    parity: dict[str, parity.ParityReport]
    step_seconds: dict[str, float] = field(default_factory=dict)


@contextmanager
def staging_folder(output_dir: Path):
    """A temporary folder beside `output_dir`, removed whatever happens.

    The export is staged like a bundle but published file by file (:func:`_publish`), not by
    swapping the folder: `output_dir` also holds what later stages wrote there (the bundle, the
    evaluation report, engine caches), which a swap would delete.
    """
    with ExitStack() as stack:
        try:
            stage = stack.enter_context(stage_beside(output_dir))
        except OSError as error:
            raise ExportError(f"cannot write to {output_dir.parent}: {error.strerror}") from error
        yield stage


def towers_of(spec: ModelSpec) -> tuple[str, ...]:
    """The encoders an entry exports: image and text, or the image encoder alone."""
    return TOWERS if spec.has_text_encoder else ("image",)


def parity_indices(count: int, pool_size: int) -> np.ndarray:
    """Sorted indices (seed 0) of the calibration-split images the parity gates use."""
    return np.sort(np.random.default_rng(0).choice(pool_size, size=min(count, pool_size), replace=False))


def parity_inputs(prompt_tokenizer: text_tokens.PromptTokenizer | None, spec: ModelSpec,
                  count: int) -> tuple[np.ndarray, np.ndarray | None, int, str | None]:
    """Real images (Fashion-MNIST calibration split) and the token ids of prompts of its class names.

    Returns pixels, token ids (None: no text tower), prompts per class and what the ids are
    (tokenized prompts, or synthetic ids when the model's tokenizer is not at hand).
    """
    if count < 1:
        raise ExportError(f"parity_images should be >= 1, but got {count}")
    calib = load_split("calib")
    pixels = preprocess_batch(to_rgb(calib.images[parity_indices(count, len(calib))]), spec.preprocess)
    if prompt_tokenizer is None:
        return pixels, None, 0, None
    templates = get_templates("ensemble")
    prompts = [p for per_class in build_prompts(calib.class_names, templates) for p in per_class]
    tokens, source = text_tokens.tokenize_prompts(prompt_tokenizer, prompts, spec.name)
    return pixels, tokens, len(templates), source


def _prompt_tokenizer(spec: ModelSpec, request: ExportRequest) -> text_tokens.PromptTokenizer | None:
    """The tokenizer of the parity prompts, found before minutes of export (None: no text tower).

    A --tokenizer the model cannot take was refused by :func:`check_export`.
    """
    if not spec.has_text_encoder:
        return None
    plan = text_tokens.prompt_tokenizer(spec.architecture, spec.name, request.tokenizer_dir)
    if plan.note:
        tqdm.write(plan.note)
    return plan


def _text_tokens_record(plan: text_tokens.PromptTokenizer | None, source: str | None, files) -> dict | None:
    if plan is None:
        return None
    record = {"tokenizer": plan.info.kind, "vocab_size": plan.info.vocab_size, "parity_tokens": source,
              "tokenizer_folder": text_tokens.TOKENIZER_FOLDER if files else None}
    if files:
        record["tokenizer_files"] = files
    if plan.info.hf_name is not None:
        record["eot_token_id"] = None  # pooled by position ("last"), not at an end-of-text id
    return record


def _file_record(path: Path) -> dict:
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


class _Steps:
    """Progress bar over named steps, with their timings."""

    def __init__(self, names: list[str]):
        self.bar = tqdm(total=len(names), desc="export", unit="step")
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str):
        self.bar.set_description(f"export: {name}")
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 2)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _plan(request: ExportRequest, towers: tuple[str, ...]) -> list[str]:
    names = ["load weights", "parity inputs", *(f"export {tower} encoder" for tower in towers), "parity fp32"]
    if request.precision == "fp16":
        names += ["convert fp16", "parity fp16"]
    if request.precision == "int8":
        names += ["quantize int8", "parity int8", "trust gate int8"]
    if request.format == "engine":
        names += ["build TensorRT engine", "parity engine"]
    return names + ["write manifest"]


def _gate(report: parity.ParityReport) -> None:
    tqdm.write(parity.format_report(report))
    if report.failures():
        raise ExportError(f"parity gate failed ({report.precision}): {'; '.join(report.failures())}; "
                          "nothing was written")


def _export_precision(towers, request, stage, reference, pixels, tokens, prompts_per_class, steps,
                      spec: ModelSpec, loaded: LoadedModel) -> dict:
    """Write and check the encoders of every precision asked for; return manifest 'precisions'."""
    precisions, reports = {}, {}
    for precision in ("fp32",) if request.precision == "fp32" else ("fp32", request.precision):
        if precision == "int8":
            precisions["int8"], reports["int8"] = _export_int8(towers, request, stage, reference, pixels, tokens,
                                                               prompts_per_class, steps, spec, loaded)
            continue
        paths = {tower: stage / encoder_file_name(tower, precision) for tower in towers}
        if precision == "fp16":
            with steps.step("convert fp16"):
                for tower in towers:
                    onnx_export.convert_to_fp16(stage / encoder_file_name(tower, "fp32"), paths[tower])
        with steps.step(f"parity {precision}"):
            image_engine = OnnxEncoder(paths["image"], precision=precision)
            text_engine = OnnxEncoder(paths["text"], precision=precision) if "text" in paths else None
            report = parity.check_parity(reference, image_engine, text_engine, pixels, tokens, precision,
                                         prompts_per_class)
        _gate(report)
        reports[precision] = report
        precisions[precision] = {"files": {f"{tower}_encoder": _file_record(paths[tower]) for tower in towers},
                                 "parity": report.to_dict()}
    return precisions, reports


def export_model(request: ExportRequest) -> ExportResult:
    """Run the whole export stage (see the module docstring)."""
    # bad input (and a missing TensorRT) fails at start, not after minutes of export
    spec = check_export(request.model, weights=request.weights, output_root=request.output_root, name=request.name,
                        engine=request.format == "engine", tokenizer_dir=request.tokenizer_dir)
    try:
        request = replace(request, name=artifact_name(spec, request.weights, request.name))
    except ArtifactNameError as error:
        raise ExportError(str(error)) from error
    towers = towers_of(spec)
    prompt_tokenizer = _prompt_tokenizer(spec, request)
    steps = _Steps(_plan(request, towers))
    try:
        with staging_folder(request.output_dir) as stage:
            with steps.step("load weights"):
                loaded = load_model(spec, request.weights)
            if prompt_tokenizer is not None:
                prompt_tokenizer = text_tokens.with_model_tokenizer(prompt_tokenizer, loaded.tokenizer,
                                                                    loaded.context_length)
            with steps.step("parity inputs"):
                pixels, tokens, prompts_per_class, token_source = parity_inputs(prompt_tokenizer, spec,
                                                                                request.parity_images)
                reference = parity.torch_embeddings(loaded.model, pixels,
                                                    None if tokens is None else torch.from_numpy(tokens),
                                                    spec.preprocess.mean, spec.preprocess.std)
            with steps.step("export image encoder"):
                onnx_export.export_image_encoder(loaded.model, spec.preprocess.mean, spec.preprocess.std,
                                                 spec.preprocess.size, stage / encoder_file_name("image", "fp32"))
            if "text" in towers:
                with steps.step("export text encoder"):
                    onnx_export.export_text_encoder(loaded.model, torch.from_numpy(tokens),
                                                    stage / encoder_file_name("text", "fp32"))
            precisions, reports = _export_precision(towers, request, stage, reference, pixels, tokens,
                                                    prompts_per_class, steps, spec, loaded)
            engines = (_build_engine(request, stage, steps, reference, pixels) if request.format == "engine"
                       else {})
            with steps.step("write manifest"):
                tokenizer_files = text_tokens.save_tokenizer(prompt_tokenizer, stage) if prompt_tokenizer else None
                manifest = build_manifest(
                    model=spec.name, architecture=spec.architecture, weights_id=loaded.weights_id,
                    weights_source=loaded.weights_source, preprocess=spec.preprocess.to_dict(),
                    embed_dim=int(reference[0].shape[1]), logit_scale=loaded.logit_scale,
                    context_length=loaded.context_length, eot_token_id=EOT_TOKEN_ID, opset=onnx_export.OPSET,
                    precisions=precisions, engines=engines, kind=spec.kind, logit_bias=loaded.logit_bias,
                    text_tokens=_text_tokens_record(prompt_tokenizer, token_source, tokenizer_files),
                    name=request.name)
                manifest["export_seconds"] = steps.seconds
                _publish(stage, request.output_dir, manifest)
    finally:
        steps.close()
    return ExportResult(request.output_dir, manifest, reports, steps.seconds)


def _export_int8(towers, request, stage, reference, pixels, tokens, prompts_per_class, steps, spec: ModelSpec,
                 loaded: LoadedModel) -> tuple[dict, parity.ParityReport]:
    """Quantize the fp32 image encoder, gate it (parity, trust); return its manifest entry and parity report."""
    fp32_path, int8_path = stage / encoder_file_name("image", "fp32"), stage / encoder_file_name("image", "int8")
    recipe = quantize.DEFAULT_RECIPE
    with steps.step("quantize int8"):
        calib = load_split("calib")
        chosen = quantize.calibration_indices(calib.labels, parity_indices(request.parity_images, len(calib)),
                                              recipe.shots_per_class, recipe.seed)
        quantize.quantize_image_encoder(fp32_path, int8_path,
                                        preprocess_batch(to_rgb(calib.images[chosen]), spec.preprocess), recipe)
    with steps.step("parity int8"):
        fp32_engine = OnnxEncoder(fp32_path)
        int8_engine = OnnxEncoder(int8_path, precision="int8")
        text_engine = OnnxEncoder(stage / encoder_file_name("text", "fp32")) if "text" in towers else None
        gate_agreement, agreement_reason = quantize.agreement_gate_applies(loaded.weights_id)
        report = quantize.int8_parity(reference, int8_engine, text_engine, pixels, tokens, prompts_per_class,
                                      gate_agreement)
    if not gate_agreement and text_engine is not None:
        tqdm.write(f"int8 top-1 agreement not gated: {agreement_reason}")
    _gate(report)
    with steps.step("trust gate int8"):
        applies, reason = quantize.trust_gate_applies(spec.name, loaded.weights_id)
        trust = quantize.TrustGateReport(False, reason)
        if applies:
            text = quantize.gate_text_prototypes(text_engine, loaded.tokenizer, calib.class_names)
            trust = quantize.check_trust_gate(fp32_engine, int8_engine, text, loaded.logit_scale, spec.preprocess,
                                              request.trust_gate_images)
    tqdm.write(quantize.format_trust_gate(trust))
    if trust.failures():
        raise ExportError(f"trust gate failed (int8): {'; '.join(trust.failures())}; nothing was written")
    files = {"image_encoder": _file_record(int8_path)}
    if "text" in towers:
        files["text_encoder"] = _file_record(stage / encoder_file_name("text", "fp32"))
    entry = {"files": files, "parity": report.to_dict(), "trust_gate": trust.to_dict(),
             "agreement_gate": "applied" if gate_agreement else f"not applicable: {agreement_reason}",
             "quantization": {"tool": "onnxruntime.quantization.quantize_static", **recipe.to_dict(),
                              "calibration_images": int(len(chosen)),
                              "calibration_data": "fashion-mnist/calib, disjoint from the parity images"}}
    return entry, report


def _build_engine(request: ExportRequest, stage: Path, steps: _Steps, reference, pixels: np.ndarray) -> dict:
    """Build the image encoder's TensorRT engine and gate it on parity; return the manifest's 'engines'.

    Only the image encoder gets an engine: it runs per frame, while the text encoder runs once per
    class at calibration (ONNX Runtime). The engine must meet the ONNX file's parity gate of its
    precision against the torch reference, so a bundle calibrated on the ONNX file keeps its meaning.
    """
    from trustvlm.export.tensorrt_engine import build_engine  # noqa: PLC0415 - needs tensorrt
    from trustvlm.runtime.scoring.tensorrt_engine import TensorRTEncoder  # noqa: PLC0415

    onnx_path = stage / encoder_file_name("image", request.precision)
    with steps.step("build TensorRT engine"):
        # reuse the engine and timing cache of the published export when they still match
        engine = build_engine(onnx_path, stage / "engines", precision=request.precision,
                              reuse_from=(request.output_dir / "engines",))
    with steps.step("parity engine"):
        report = parity.check_parity(reference, TensorRTEncoder(engine), None, pixels, None, request.precision, 0)
    tqdm.write(f"TensorRT engine {parity.format_report(report)}")
    if report.failures():
        raise ExportError(f"parity gate failed (TensorRT engine, {request.precision}): "
                          f"{'; '.join(report.failures())}; nothing was written")
    return {"image_encoder": {"file": f"engines/{engine.name}", "sha256": sha256_file(engine),
                              "precision": request.precision, "onnx_sha256": sha256_file(onnx_path),
                              "parity": report.to_dict()}}


def _publish(stage: Path, output_dir: Path, manifest: dict) -> None:
    """Move every staged file into `output_dir` (encoders first, manifest last)."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for old in output_dir.glob("*_encoder*.onnx"):
            old.unlink()  # encoders of another export would contradict the new manifest
        if (stage / text_tokens.TOKENIZER_FOLDER).is_dir():
            shutil.rmtree(output_dir / text_tokens.TOKENIZER_FOLDER, ignore_errors=True)  # replaced, not merged
        for path in sorted(stage.rglob("*")):
            if path.is_file():
                target = output_dir / path.relative_to(stage)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
        write_json_atomic(output_dir / MANIFEST_NAME, manifest)
        _prune_engines(output_dir, manifest)
    except OSError as error:
        raise ExportError(f"cannot write to {output_dir}: {error.strerror}") from error


def _prune_engines(output_dir: Path, manifest: dict) -> None:
    """Remove engines the new manifest does not list (each export would otherwise leave one more)."""
    from trustvlm.export.tensorrt_engine import prune_engines  # noqa: PLC0415

    if (output_dir / "engines").is_dir():
        prune_engines(output_dir / "engines", {Path(r["file"]).name for r in manifest.get("engines", {}).values()})
