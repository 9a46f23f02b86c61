"""The ``afd-trt`` command: ``detect``, ``make-test-weights``, ``bench``.

Subcommands are registered in a plain dict; each has its own argument builder and runner.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main"]

logger = logging.getLogger("afd_trt.cli")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


# -- make-test-weights ---------------------------------------------------------------------


def _add_make_test_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", type=Path, help="directory to write the checkpoints into")
    p.add_argument("--seed", type=int, default=0, help="RNG seed (default 0)")


def _run_make_test_weights(args: argparse.Namespace) -> int:
    from .test_weights import write_test_weights

    written = write_test_weights(args.out_dir, seed=args.seed)
    for name, files in written.items():
        for fmt, path in files.items():
            logger.info("%s (%s): %s", name, fmt, path)
    print(
        json.dumps({name: {k: str(v) for k, v in files.items()} for name, files in written.items()}, indent=2)
    )
    return 0


# -- detect ----------------------------------------------------------------------------------


def iter_inputs(inputs: Sequence[str]) -> Iterator[Path]:
    """Expand files, directories (recursive, image extensions) and ``@list.txt`` files."""
    for item in inputs:
        if item.startswith("@"):
            lines = Path(item[1:]).read_text(encoding="utf-8").splitlines()
            yield from (Path(s.strip()) for s in lines if s.strip() and not s.startswith("#"))
            continue
        path = Path(item)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        else:
            yield path


def face_record(face: dict[str, np.ndarray]) -> dict[str, Any]:
    bbox = face["bbox"]
    return {
        "bbox": [float(v) for v in bbox[:4]],
        "score": float(bbox[4]) if len(bbox) > 4 else None,
        "keypoints": face["keypoints"].astype(float).tolist(),
    }


def _add_detector_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--face-detector", choices=("yolov3", "faster-rcnn"), default="yolov3")
    p.add_argument("--face-detector-checkpoint", type=Path, default=None)
    p.add_argument("--landmark-checkpoint", type=Path, default=None)
    p.add_argument("--device", default="auto", help="cpu, cuda:0, ... or auto (default)")
    p.add_argument("--backend", default="torch")
    p.add_argument("--no-flip", action="store_true", help="disable the flip test")
    p.add_argument("--box-scale-factor", type=float, default=1.1)


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
    )


def _add_detect(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files, directories or @list.txt")
    p.add_argument("-o", "--output", type=Path, required=True, help="JSON Lines output file")
    p.add_argument("--min-score", type=float, default=0.0, help="drop faces scoring below this")
    _add_detector_args(p)


def _run_detect(args: argparse.Namespace) -> int:
    import cv2  # noqa: F401  (fail early and clearly if OpenCV is missing)

    det = _make_detector(args)
    n_in = n_faces = n_fail = 0
    t0 = time.perf_counter()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", encoding="utf-8") as out:
        for path in iter_inputs(args.inputs):
            n_in += 1
            record: dict[str, Any] = {"path": str(path)}
            try:
                from .image import load_image

                img = load_image(path)
                record.update(height=int(img.shape[0]), width=int(img.shape[1]))
                faces = [f for f in det(img) if len(f["bbox"]) < 5 or f["bbox"][4] >= args.min_score]
                record["faces"] = [face_record(f) for f in faces]
                n_faces += len(faces)
            except (OSError, TypeError, ValueError) as e:
                n_fail += 1
                record["error"] = str(e)
                logger.error("%s: %s", path, e)
            out.write(json.dumps(record) + "\n")
            out.flush()
    dt = time.perf_counter() - t0
    logger.info(
        "%d inputs, %d faces, %d failed, %.1f s (%.2f images/s) -> %s",
        n_in,
        n_faces,
        n_fail,
        dt,
        n_in / dt if dt > 0 else 0.0,
        args.output,
    )
    return 1 if n_fail else 0


# -- build -----------------------------------------------------------------------------------


def _add_build(p: argparse.ArgumentParser) -> None:
    from build_engines import add_arguments

    add_arguments(p)


def _run_build(args: argparse.Namespace) -> int:
    from build_engines import run

    return run(args)


# -- entry point -----------------------------------------------------------------------------

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _add_bench(p: argparse.ArgumentParser) -> None:
    from .bench import add_bench_args

    add_bench_args(p)


def _run_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)


COMMANDS: dict[str, Command] = {
    "detect": ("detect faces and landmarks, write JSON Lines", _add_detect, _run_detect),
    "build": ("build TorchScript / ONNX / TensorRT engines into the engine cache", _add_build, _run_build),
    "bench": ("time the pipeline, optionally side by side with upstream", _add_bench, _run_bench),
    "make-test-weights": (
        "write seeded random checkpoints in the released formats (they detect nothing real)",
        _add_make_test_weights,
        _run_make_test_weights,
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="afd-trt", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    return COMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
