"""The ``afd-trt`` command: ``detect``, ``merge``, ``build``, ``bench``, ``cache`` and
``make-test-weights``.

Subcommands are registered in a plain dict; each has its own argument builder and runner.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .argtypes import int_at_least, number

__all__ = ["main"]

logger = logging.getLogger("afd_trt.cli")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


# -- make-test-weights ---------------------------------------------------------------------


def _add_make_test_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", type=Path, help="directory to write the checkpoints into")
    p.add_argument("--seed", type=int_at_least(0, 2**52), default=0, help="RNG seed, 0 to 2**52 (default 0)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files under the released names that are not test weights (real checkpoints)",
    )


def _run_make_test_weights(args: argparse.Namespace) -> int:
    from .test_weights import NotTestWeightsError, write_test_weights

    try:
        written = write_test_weights(args.out_dir, seed=args.seed, overwrite=args.overwrite)
    except (NotTestWeightsError, ValueError) as e:  # a real checkpoint in the way, a seed out of range
        logger.error("make-test-weights: %s", e)
        return 2
    except OSError as e:
        logger.error("make-test-weights: cannot write into %s: %s", args.out_dir, e.strerror or e)
        return 2
    for name, files in written.items():
        for fmt, path in files.items():
            logger.info("%s (%s): %s", name, fmt, path)
    print(
        json.dumps({name: {k: str(v) for k, v in files.items()} for name, files in written.items()}, indent=2)
    )
    return 0


# -- detect ----------------------------------------------------------------------------------

DETECT_EPILOG = """\
inputs: image files, folders (recursive; images and videos by extension; links to folders
not entered), glob patterns ('shots/**/*.png', quoted), @list.txt (one input per line), videos
(.mp4 .avi .mkv .mov .webm; every --every-th frame, recorded with its frame index and time in
seconds). A name that matches nothing, or a link whose target is gone, is recorded as a failure.

output: JSON Lines, one record per image or frame, appended as each finishes:
  {"path", "width", "height", ["frame", "time",] "faces": [{"bbox": [x0, y0, x1, y1], "score",
  "keypoints": [[x, y, score] x 28]}]}  or  {"path", ..., "error": reason}.
Resumable: a re-run with the same output skips the inputs (path, frame) already recorded
(failed ones too, unless --retry-errors); a killed run leaves a valid file. --format coco keeps
the JSON Lines journal at OUTPUT.jsonl and (re)writes the COCO file OUTPUT atomically at the end.

cluster jobs: N jobs with the same inputs and --shard 0/N ... --shard N-1/N (one output each)
split them by a hash of each input's path; `afd-trt merge OUT-*.jsonl -o all.jsonl` (or
`-o all.json --format coco`) joins their journals.

exit status: 0 all inputs processed, 1 some input failed (now or recorded earlier) or writing
failed, 2 bad arguments, models that cannot be loaded, or a run refused before it began (other
settings than the journal's, an output that is not a journal, a journal another run holds), 130
interrupted (Ctrl-C, SIGTERM: the journal stays valid; run again to finish).
"""


def _add_detector_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--face-detector", choices=("yolov3", "faster-rcnn"), default="yolov3")
    g.add_argument(
        "--face-detector-checkpoint",
        type=Path,
        default=None,
        metavar="PATH",
        help="detector .pth/.safetensors (default: the released weights, resolved or downloaded)",
    )
    g.add_argument(
        "--landmark-checkpoint",
        type=Path,
        default=None,
        metavar="PATH",
        help="HRNetV2 .pth/.safetensors (default: the released weights)",
    )
    g.add_argument(
        "--face-detector-config",
        type=Path,
        default=None,
        metavar="TOML",
        help="detector config overriding configs/<face-detector>.toml (e.g. another img_scale)",
    )
    g.add_argument(
        "--landmark-config",
        type=Path,
        default=None,
        metavar="TOML",
        help="landmark config overriding configs/hrnetv2.toml",
    )
    g.add_argument("--device", default="auto", help="cpu, cuda:0, ... or auto (default: a GPU when present)")
    g.add_argument(
        "--backend",
        default="torch",
        help="network runner (torch, torchscript, onnxruntime, openvino, tensorrt, auto)",
    )
    g.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="fp32 (default, upstream's numbers); opt-in bf16 (CPU with AVX512-BF16/AMX, CUDA) or fp16 (CUDA)",
    )
    g.add_argument(
        "--no-flip", action="store_true", help="disable the flip test (faster, slightly less accurate)"
    )
    g.add_argument(
        "--box-scale-factor",
        type=_positive,
        default=1.1,
        help="detected boxes are enlarged by this (default 1.1)",
    )
    g.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="images per pipeline batch (default: 16 on a GPU, 4 on the CPU, where it only sets the read-ahead)",
    )
    g.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="image decoding threads (default: 2 on the CPU; on a GPU one per core less one, 2 to 8)",
    )
    g.add_argument(
        "--device-pipeline",
        choices=("auto", "on", "off"),
        default="auto",
        help="decode/resize/crop/flip-merge on the network's device (auto: on for CUDA; see Detector)",
    )
    g.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay CUDA graphs of the torch/torchscript networks (CUDA only; opt-in)",
    )
    g.add_argument(
        "--jpeg-decoder",
        choices=("opencv", "torchvision"),
        default="opencv",
        help="torchvision: JPEGs decoded by nvJPEG on the GPU with the device pipeline (default opencv)",
    )
    g.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=None,
        help="refuse image files declaring more pixels, before decoding (default $AFD_TRT_MAX_PIXELS or 400 Mpx)",
    )
    g.add_argument(
        "--no-download",
        action="store_true",
        help="never download released weights: a checkpoint not given, in $AFD_TRT_WEIGHTS or cached is an error at once",
    )


def _make_detector(args: argparse.Namespace) -> Any:
    from .detector import Detector

    return Detector(
        face_detector=args.face_detector,
        face_detector_checkpoint=args.face_detector_checkpoint,
        landmark_checkpoint=args.landmark_checkpoint,
        device=args.device,
        flip_test=not args.no_flip,
        box_scale_factor=args.box_scale_factor,
        backend=args.backend,
        face_detector_config=getattr(args, "face_detector_config", None),
        landmark_config=getattr(args, "landmark_config", None),
        precision=getattr(args, "precision", "fp32"),
        max_pixels=getattr(args, "max_pixels", None),
        device_pipeline=_on_off(getattr(args, "device_pipeline", "auto")),
        jpeg_decoder=getattr(args, "jpeg_decoder", "opencv"),
        cuda_graphs=getattr(args, "cuda_graphs", False),
        download=not getattr(args, "no_download", False),
    )


def _on_off(value: str) -> bool | None:
    """``auto`` / ``on`` / ``off`` -> None / True / False."""
    return None if value == "auto" else value == "on"


def _result_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The options that change what a detect run records, kept beside its journal so that a
    resumed run cannot silently mix results made with other settings."""

    def path(p: Path | None) -> str | None:
        return None if p is None else str(Path(p).resolve())

    return {
        "face_detector": args.face_detector,
        "face_detector_checkpoint": path(args.face_detector_checkpoint),
        "landmark_checkpoint": path(args.landmark_checkpoint),
        "face_detector_config": path(args.face_detector_config),
        "landmark_config": path(args.landmark_config),
        "precision": args.precision,
        "flip_test": not args.no_flip,
        "box_scale_factor": args.box_scale_factor,
        "min_score": args.min_score,
        "min_face_size": args.min_face_size,
        "every": args.every,
        "crops": path(args.crops),
        "crop_mode": args.crop_mode,
        "crop_size": args.crop_size,
        "crop_scale": args.crop_scale,
        "crop_margin": args.crop_margin,
        "crop_border": args.crop_border,
        "crop_ext": args.crop_ext,
        "draw": path(args.draw),
        "shard": args.shard,
    }


def _extensions(text: str) -> tuple[str, ...]:
    """``"jpg,.PNG"`` -> ``(".jpg", ".png")``."""
    exts = tuple("." + e.strip().lower().lstrip(".") for e in text.split(",") if e.strip().lstrip("."))
    if not exts:
        raise argparse.ArgumentTypeError(f"expected extensions like jpg,png, got {text!r}")
    return exts


def _shard(text: str) -> tuple[int, int]:
    from .detect_job import parse_shard

    try:
        return parse_shard(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_finite = number()
_non_negative = number(0.0)
_positive = number(0.0, strict=True)
_positive_int = int_at_least(1)


def _crop_size(text: str) -> int:
    from .crops import MAX_CROP_SIZE

    return int_at_least(1, MAX_CROP_SIZE)(text)


def _add_detect(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = DETECT_EPILOG
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image, folder, glob pattern, @list.txt or video"
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "-o", "--output", type=Path, required=True, help="result file (JSON Lines, or COCO JSON)"
    )
    out.add_argument(
        "--format",
        choices=("jsonl", "coco"),
        default="jsonl",
        help="jsonl (default): OUTPUT is the journal; coco: OUTPUT is a COCO JSON written at the end",
    )
    out.add_argument(
        "--journal",
        type=Path,
        default=None,
        metavar="PATH",
        help="the JSON Lines journal (default: OUTPUT for jsonl, OUTPUT.jsonl for coco)",
    )
    out.add_argument("--overwrite", action="store_true", help="start over: discard the existing journal")
    out.add_argument(
        "--retry-errors",
        action="store_true",
        help="drop recorded failures from the journal and process those inputs again",
    )
    out.add_argument(
        "--ext",
        type=_extensions,
        default=None,
        metavar="EXT[,EXT...]",
        help="folders: take files with these extensions (default: .jpg .jpeg .png .bmp .webp .tif .tiff "
        "and videos .mp4 .avi .mkv .mov .webm)",
    )
    out.add_argument(
        "--every",
        type=_positive_int,
        default=1,
        metavar="N",
        help="videos: process frames 0, N, 2N, ... (default 1: every frame)",
    )
    out.add_argument(
        "--shard",
        type=_shard,
        default=None,
        metavar="K/N",
        help="cluster jobs: process only shard K of N (K from 0 to N-1), chosen by a hash of each "
        "input's path; run N jobs with the same inputs, one output each",
    )
    out.add_argument(
        "--min-score", type=_finite, default=0.0, help="drop faces scoring below this (default 0)"
    )
    out.add_argument(
        "--min-face-size",
        type=_non_negative,
        default=0.0,
        metavar="PX",
        help="drop faces whose box's shorter side is below PX pixels (default 0)",
    )
    c = p.add_argument_group("crops and drawings")
    c.add_argument(
        "--crops",
        type=Path,
        default=None,
        metavar="DIR",
        help="write face crops into DIR: <stem>_<hash>[_frame<N>]_f<face>.<ext>",
    )
    c.add_argument(
        "--crop-mode",
        choices=("aligned", "box"),
        default="aligned",
        help="aligned (default): similarity from eyes, nose and mouth corners to a frontal "
        "template; box: the square around the box, no rotation",
    )
    c.add_argument(
        "--crop-size", type=_crop_size, default=256, metavar="PX", help="crop side, 1 to 8192 (default 256)"
    )
    c.add_argument(
        "--crop-scale",
        type=_positive,
        default=1.0,
        help="aligned: zoom (2: face twice as large; default 1: eye distance = size/4)",
    )
    c.add_argument(
        "--crop-margin",
        type=_positive,
        default=1.0,
        help="box: square side = longer box side x this (default 1)",
    )
    c.add_argument(
        "--crop-border",
        choices=("constant", "replicate", "reflect"),
        default="constant",
        help="fill outside the image (default constant: black)",
    )
    c.add_argument(
        "--crop-ext", choices=("png", "jpg", "webp"), default="png", help="crop file type (default png)"
    )
    c.add_argument(
        "--draw",
        type=Path,
        default=None,
        metavar="DIR",
        help="write each image with boxes and landmarks drawn into DIR: <stem>_<hash>[_frame<N>].jpg",
    )
    c.add_argument(
        "--draw-landmark-threshold",
        type=_finite,
        default=0.3,
        help="landmarks scoring below this are drawn yellow, others red (default 0.3)",
    )
    _add_detector_args(p)
    r = p.add_argument_group("reporting")
    r.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bar; log warnings and errors only (the summary still when inputs failed)",
    )
    r.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=LOG_LEVELS,
        help="as the top-level --log-level (default INFO, WARNING with --quiet)",
    )


def _run_detect(args: argparse.Namespace) -> int:
    from .detect_job import DetectOptions, SettingsMismatchError, check_run_settings, run_detect_job

    opts = DetectOptions(
        inputs=args.inputs,
        output=args.output,
        format=args.format,
        journal=args.journal,
        overwrite=args.overwrite,
        retry_errors=args.retry_errors,
        every=args.every,
        exts=args.ext,
        batch_size=args.batch_size,
        workers=args.workers,
        min_score=args.min_score,
        min_face_size=args.min_face_size,
        crops=args.crops,
        crop_mode=args.crop_mode,
        crop_size=args.crop_size,
        crop_scale=args.crop_scale,
        crop_margin=args.crop_margin,
        crop_border=args.crop_border,
        crop_ext=args.crop_ext,
        draw=args.draw,
        draw_landmark_threshold=args.draw_landmark_threshold,
        progress=not args.quiet,
        shard=args.shard,
        settings=_result_settings(args),
    )
    if opts.format == "coco" and opts.journal_path().resolve() == opts.output.resolve():
        logger.error("--journal must differ from the COCO output %s", opts.output)
        return 2
    if opts.format == "jsonl" and opts.journal_path().resolve() != opts.output.resolve():
        logger.error(
            "--journal %s: with --format jsonl the output %s is the journal; --journal names the "
            "journal of a --format coco run",
            opts.journal,
            opts.output,
        )
        return 2
    try:  # before the models load, to fail fast; recorded once the journal is opened, under its lock
        check_run_settings(opts.journal_path(), opts.settings or {}, overwrite=opts.overwrite, record=False)
    except SettingsMismatchError as e:
        logger.error("%s", e)
        return 2
    try:
        det = _make_detector(args)
    except (OSError, ValueError, RuntimeError) as e:
        logger.error("cannot load the models: %s", e)
        return 2
    if opts.settings is not None:  # the weights themselves, not only where they came from
        from .weights import sha256_file

        opts.settings["weights_sha256"] = {
            name: sha256_file(p) for name, p in sorted(det.checkpoint_files.items())
        }

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not in the main thread: keep the default
        signal.signal(signal.SIGTERM, _terminate)
    from .detect_job import JournalInUseError

    try:
        summary = run_detect_job(det, opts)
    except (ValueError, JournalInUseError) as e:  # other settings, not a journal, another run's
        logger.error("%s", e)
        return 2
    except (OSError, RuntimeError) as e:
        logger.error("detect stopped: %s", e)
        return 1
    failed = summary.failed + summary.failed_before
    where = opts.output if opts.format == "jsonl" else f"{opts.output} (journal {opts.journal_path()})"
    log = logger.warning if failed or summary.interrupted else logger.info
    log("detect: %s -> %s", summary.line(), where)
    for line in summary.failures[:10]:
        logger.warning("failed: %s", line)
    if len(summary.failures) > 10:
        logger.warning("... and %d more failures (see the error records)", len(summary.failures) - 10)
    if summary.interrupted:
        return 130
    return 1 if failed else 0


# -- merge -----------------------------------------------------------------------------------


def _add_merge(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "journals", nargs="+", type=Path, metavar="JOURNAL", help="JSON Lines journals (e.g. shards)"
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="the merged result file")
    p.add_argument("--format", choices=("jsonl", "coco"), default="jsonl", help="jsonl (default) or coco")
    p.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="exit 0 when shards of the job are missing (the merged file is written either way)",
    )


def _run_merge(args: argparse.Namespace) -> int:
    from .detect_job import merge_journals, record_line
    from .outputs import coco_from_records, write_bytes_atomic, write_json_atomic

    if any(j.resolve() == args.output.resolve() for j in args.journals):
        logger.error("merge: the output %s is also an input", args.output)
        return 2
    try:
        merged = merge_journals(args.journals)
    except (OSError, ValueError) as e:  # unreadable, other settings, not a journal
        logger.error("merge: %s", e)
        return 2
    records = merged.records
    try:
        if args.format == "coco":
            write_json_atomic(args.output, coco_from_records(records))
        else:
            write_bytes_atomic(args.output, b"".join(record_line(r) for r in records))
    except OSError as e:
        logger.error("merge: cannot write %s: %s", args.output, e.strerror or e)
        return 1
    except (KeyError, TypeError, ValueError) as e:  # a record without its fields
        logger.error("merge: a record cannot be put in COCO form (%s: %s)", type(e).__name__, e)
        return 1
    errors = sum("error" in r for r in records)
    logger.info(
        "merge: %d inputs (%d failed) from %d journals -> %s",
        len(records),
        errors,
        len(args.journals),
        args.output,
    )
    if merged.missing_shards and not args.allow_incomplete:
        logger.error(
            "merge: shard(s) %s of the job are missing, so %s lacks their inputs "
            "(--allow-incomplete to accept that)",
            ", ".join(merged.missing_shards),
            args.output,
        )
        return 1
    return 0


# -- build -----------------------------------------------------------------------------------


def _add_build(p: argparse.ArgumentParser) -> None:
    from build_engines import add_arguments

    add_arguments(p)


def _run_build(args: argparse.Namespace) -> int:
    from build_engines import run

    return run(args)


# -- cache -----------------------------------------------------------------------------------


def _add_cache(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-dir",
        default=None,
        help="engine cache directory (default: $AFD_TRT_CACHE/engines, else $XDG_CACHE_HOME/afd_trt/engines, "
        "else ~/.cache/afd_trt/engines)",
    )
    p.add_argument("--verify", action="store_true", help="hash every engine file against its sidecar (slow)")
    p.add_argument(
        "--prune",
        action="store_true",
        help="delete what this install cannot use: stale (another runtime version or cache format, older or "
        "newer, for a device of this machine), superseded, corrupt and leftover files; entries of other devices are kept",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="with --prune: say what would be deleted, delete nothing"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per entry instead of the table")


def _run_cache(args: argparse.Namespace) -> int:
    from .engine_cache import REMOVABLE, EngineCache, remove_entry, scan_cache
    from .engines import current_runtimes, machine_device_tags

    if args.cache_dir is not None and not str(args.cache_dir).strip():
        logger.error("cache: --cache-dir is empty (it would name the current folder)")
        return 2
    cache = EngineCache(args.cache_dir)
    if args.dry_run and not args.prune:
        logger.error("cache: --dry-run goes with --prune")
        return 2
    if cache.root.exists() and not cache.root.is_dir():
        logger.error("cache: %s is not a directory", cache.root)
        return 2
    try:
        entries = scan_cache(cache.root, current_runtimes(), machine_device_tags(), verify=args.verify)
    except OSError as err:  # the cache folder itself cannot be listed
        logger.error("cache: cannot read %s: %s", err.filename or cache.root, err.strerror or err)
        return 1
    out = sys.stdout
    for e in entries:
        if args.json:
            record = {
                "path": str(e.path),
                "status": e.status,
                "reason": e.reason,
                "bytes": e.size,
                "key": dict(e.key),
            }
            out.write(json.dumps(record, sort_keys=True) + "\n")
        else:
            k = e.key
            what = (
                " ".join(str(k.get(f, "?")) for f in ("backend", "precision", "device", "runtime"))
                if k
                else "-"
            )
            out.write(
                f"{e.status:<15} {e.size / 2**20:9.1f} MB  {e.path.relative_to(cache.root)}  [{what}] {e.reason}\n"
            )
    removable = [e for e in entries if e.status in REMOVABLE]
    mb = sum(e.size for e in entries) / 2**20
    logger.info(
        "cache %s: %d entries, %.1f MB; %d removable (%.1f MB)",
        cache.root, len(entries), mb, len(removable), sum(e.size for e in removable) / 2**20,
    )  # fmt: skip
    if args.prune:
        if args.dry_run:
            logger.info("cache: --dry-run, nothing deleted")
            return 0
        freed = removed = failed = 0
        for e in removable:
            try:
                freed += remove_entry(e)
            except OSError as err:  # a read-only cache, another user's files: this entry only
                logger.error("cache: cannot delete %s: %s", err.filename or e.path, err.strerror or err)
                failed += 1
                continue
            removed += not any(p.exists() for p in e.files if not p.name.endswith(".lock"))
        logger.info(
            "cache: deleted %d of %d removable entries, %.1f MB freed%s",
            removed, len(removable), freed / 2**20, f"; {failed} could not be deleted" if failed else "",
        )  # fmt: skip
        return 1 if failed else 0
    return 0


# -- entry point -----------------------------------------------------------------------------

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _add_bench(p: argparse.ArgumentParser) -> None:
    from .bench import add_bench_args

    add_bench_args(p)


def _run_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)


COMMANDS: dict[str, Command] = {
    "detect": (
        "detect faces and landmarks in images, folders and videos: resumable JSON Lines or COCO, crops, drawings",
        _add_detect,
        _run_detect,
    ),
    "merge": (
        "merge detect journals (the shards of a cluster job) into one JSON Lines or COCO file",
        _add_merge,
        _run_merge,
    ),
    "build": ("build TorchScript / ONNX / TensorRT engines into the engine cache", _add_build, _run_build),
    "bench": ("time the pipeline, optionally side by side with upstream", _add_bench, _run_bench),
    "cache": (
        "list the engine cache with each entry's status; --prune deletes what no process can use",
        _add_cache,
        _run_cache,
    ),
    "make-test-weights": (
        "write seeded random checkpoints in the released formats (they detect nothing real)",
        _add_make_test_weights,
        _run_make_test_weights,
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="afd-trt", description=__doc__)
    parser.add_argument("--log-level", default=None, choices=LOG_LEVELS, help="default INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line, for reports
    level = args.log_level or ("WARNING" if getattr(args, "quiet", False) else "INFO")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    return COMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
