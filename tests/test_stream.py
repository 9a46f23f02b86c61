"""Detector.stream: input order, laziness (bounded read-ahead), bad items kept apart, equality
with per-image calls, per-stage timings, and the CUDA out-of-memory split (fault injected into
the landmark network's calls on the CPU; the real network does the work)."""

from __future__ import annotations

import gc
import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from images import synthetic, tadne_crop

import afd_trt
from afd_trt.detector import StreamResult, decode_workers

Weights = dict[str, dict[str, Path]]


@pytest.fixture(scope="module")
def det(seeded_weights: Callable[[int], Weights]) -> afd_trt.Detector:
    w = seeded_weights(0)
    return afd_trt.Detector("yolov3", w["yolov3"]["pth"], w["hrnetv2"]["pth"], device="cpu", flip_test=False)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [
        tadne_crop(0, 0, 512, 512, (256, 256)),
        synthetic(200, 320, seed=1),
        tadne_crop(1024, 512, 512, 512, (288, 224)),
        synthetic(240, 240, seed=2),
    ]


@pytest.fixture(scope="module")
def singles(det: afd_trt.Detector, images: list[np.ndarray]) -> list[list[dict[str, np.ndarray]]]:
    """``det(image)`` of each of ``images``, one call per image: what the stream must reproduce."""
    return [det(img) for img in images]


def _same(a: list[dict[str, np.ndarray]] | None, b: list[dict[str, np.ndarray]]) -> None:
    assert a is not None
    assert len(a) == len(b)
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_array_equal(fa["bbox"], fb["bbox"])
        np.testing.assert_array_equal(fa["keypoints"], fb["keypoints"])


@pytest.mark.parametrize(("batch_size", "workers"), [(1, 0), (3, 2), (8, 1)])
def test_stream_equals_single_calls_in_order(
    det: afd_trt.Detector,
    images: list[np.ndarray],
    singles: list[list[dict[str, np.ndarray]]],
    tmp_path: Path,
    batch_size: int,
    workers: int,
) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), images[2])
    inputs: list[object] = [images[0], str(bad), good, images[1], images[3]]
    results = list(det.stream(inputs, batch_size=batch_size, workers=workers))  # type: ignore[arg-type]
    assert [r.index for r in results] == list(range(len(inputs)))
    assert [r.source for r in results] == [None, str(bad), str(good), None, None]
    assert not results[1].ok
    assert str(bad) in str(results[1].error)
    assert results[1].faces is None
    for r, i in zip([results[0], results[2], results[3], results[4]], [0, 2, 1, 3], strict=True):
        assert r.ok, r.error
        assert (r.height, r.width) == images[i].shape[:2]
        _same(r.faces, singles[i])
    assert any(r.faces for r in results if r.ok), "the seeded weights find faces on these images"


def test_stream_reads_lazily_and_boundedly(
    det: afd_trt.Detector, images: list[np.ndarray], singles: list[list[dict[str, np.ndarray]]]
) -> None:
    pulled = 0

    def endless() -> Iterator[np.ndarray]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield images[i % len(images)]

    batch_size, workers = 2, 1
    it = det.stream(endless(), batch_size=batch_size, workers=workers)
    first = list(itertools.islice(it, 5))
    it.close()  # type: ignore[attr-defined]
    assert [r.index for r in first] == [0, 1, 2, 3, 4]
    # Read-ahead is bounded by 2 * batch_size + workers beyond what was yielded.
    assert pulled <= 5 + 2 * batch_size + workers + batch_size
    _same(first[4].faces, singles[0])


@pytest.mark.parametrize(
    ("device", "cores", "want"),
    [
        ("cpu", 1, 2),
        ("cpu", 64, 2),
        ("cuda", 1, 2),
        ("cuda", 3, 2),
        ("cuda", 4, 3),
        ("cuda", 16, 8),
        ("cuda:1", 64, 8),
    ],
)
def test_decode_workers_by_device_and_cores(device: str, cores: int, want: int) -> None:
    assert decode_workers(torch.device(device), cores) == want


def test_stream_decodes_in_the_default_workers(det: afd_trt.Detector, images: list[np.ndarray]) -> None:
    """Without ``workers`` the stream decodes in :attr:`default_workers` threads (2 on the CPU)."""
    assert det.default_workers == 2
    before = set(threading.enumerate())  # another stream's pool may still be winding down
    it = det.stream(itertools.cycle(images), batch_size=2)
    next(it)
    new = [t.name for t in set(threading.enumerate()) - before if t.name.startswith("afd_trt-decode")]
    it.close()  # type: ignore[attr-defined]
    assert len(new) == det.default_workers, new


def test_stream_boxes_in_step(
    det: afd_trt.Detector, images: list[np.ndarray], singles: list[list[dict[str, np.ndarray]]]
) -> None:
    boxes = [None, [[10, 12, 120, 140, 0.9]], [], None]
    results = list(det.stream(images, boxes=boxes, batch_size=2))
    _same(results[0].faces, singles[0])
    _same(results[1].faces, det(images[1], boxes=boxes[1]))
    assert results[2].faces == []
    with pytest.raises(ValueError, match="ran out at image 2"):
        list(det.stream(images, boxes=boxes[:2], batch_size=1))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_source_keeps_what_was_read(
    det: afd_trt.Detector,
    images: list[np.ndarray],
    singles: list[list[dict[str, np.ndarray]]],
    workers: int,
) -> None:
    """A reader that dies (a broken queue, a lost connection) is not a bad input: the stream
    raises its exception, but only after the results of every input it handed over."""

    def reader() -> Iterator[np.ndarray]:
        yield from images[:3]
        raise ConnectionError("camera 7 went away")

    got: list[StreamResult] = []
    with pytest.raises(ConnectionError, match="camera 7 went away"):
        got.extend(det.stream(reader(), batch_size=2, workers=workers))  # keeps what came before
    assert [r.index for r in got] == [0, 1, 2]
    for r, want in zip(got, singles, strict=False):
        _same(r.faces, want)
    # box lists that run out: the images that had boxes still get their results
    boxes = [[[10, 12, 120, 140, 0.9]], []]
    got = []
    with pytest.raises(ValueError, match="ran out at image 2"):
        got.extend(det.stream(images, boxes=boxes, batch_size=4, workers=workers))
    assert [r.index for r in got] == [0, 1]
    _same(got[0].faces, det(images[0], boxes=boxes[0]))
    assert got[1].faces == []


def test_stream_bad_boxes_lose_nothing(
    det: afd_trt.Detector, images: list[np.ndarray], singles: list[list[dict[str, np.ndarray]]]
) -> None:
    boxes = [None, [[10, 12, float("nan"), 140]], None]
    results = list(det.stream(images[:3], boxes=boxes, batch_size=3))
    assert results[1].error is not None
    assert "non-finite" in str(results[1].error)
    _same(results[0].faces, singles[0])
    _same(results[2].faces, singles[2])


def test_stream_keeps_images_on_request(
    det: afd_trt.Detector, images: list[np.ndarray], tmp_path: Path
) -> None:
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), images[1])
    kept = list(det.stream([images[0], path], boxes=[[], []], keep_images=True))
    np.testing.assert_array_equal(kept[0].image, images[0])
    np.testing.assert_array_equal(kept[1].image, images[1])
    assert all(r.image is None for r in det.stream([images[0], path], boxes=[[], []]))


def test_stream_argument_errors(det: afd_trt.Detector, images: list[np.ndarray], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        list(det.stream(images, batch_size=0))
    with pytest.raises(ValueError, match="workers must be an integer >= 0, got -1"):
        list(det.stream(images, workers=-1))
    # int() made 1.5 one image per batch and took "2" and True
    for bad in (1.5, "2", True):
        with pytest.raises(TypeError, match=f"batch_size must be an integer >= 1, got {type(bad).__name__}"):
            list(det.stream(images, batch_size=bad))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="workers must be an integer >= 0"):
            list(det.stream(images, workers=bad))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="batch_size must be an integer >= 1"):
            det.detect_batch(images, batch_size=bad)  # type: ignore[arg-type]
    assert len(list(det.stream(images[:1], batch_size=np.int64(2), workers=np.int32(0)))) == 1
    # One image where several are expected: its rows (or a path's characters) were run as images.
    path = tmp_path / "one.png"
    cv2.imwrite(str(path), images[0])
    for one in (images[0], str(path), path):
        with pytest.raises(TypeError, match="images: expected an iterable of images"):
            next(det.stream(one))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="for one image call the detector itself"):
            det.detect_faces(one)  # type: ignore[arg-type]


def test_a_reader_may_refill_one_buffer(
    det: afd_trt.Detector, images: list[np.ndarray], singles: list[list[dict[str, np.ndarray]]]
) -> None:
    """Video readers refill one array frame after frame; the stream reads ahead of the frame it
    runs, so it copies each array as it reads it (it kept a reference: every frame but the last
    of a batch came out with the last one's faces)."""
    same = [images[0], images[2]]
    buf = np.empty_like(same[0])

    def frames() -> Iterator[np.ndarray]:
        for i in (0, 1, 0, 1):
            buf[...] = same[i] if same[i].shape == buf.shape else cv2.resize(same[i], buf.shape[1::-1])
            yield buf

    want = [det(same[0]), det(cv2.resize(same[1], buf.shape[1::-1]))]
    assert [len(w) for w in want] != [0, 0]
    for workers in (0, 2):
        got = list(det.stream(frames(), batch_size=2, workers=workers))
        for r, i in zip(got, (0, 1, 0, 1), strict=True):
            assert r.ok, r.error
            _same(r.faces, want[i])
    assert singles  # the module's detector is the one compared


def test_detect_faces_reads_and_checks_its_images(
    det: afd_trt.Detector, images: list[np.ndarray], tmp_path: Path
) -> None:
    """The public ``detect_faces`` takes what the detector takes (paths, gray arrays) and refuses
    what it refuses, naming the image (it passed a path on as an array, and ran float32)."""
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), images[0])
    from_path, from_array = det.detect_faces([path, images[0]])
    np.testing.assert_array_equal(from_path, from_array)
    assert len(from_array) == len(det(images[0]))
    gray = cv2.cvtColor(images[1], cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(
        det.detect_faces([gray])[0], det.detect_faces([cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)])[0]
    )
    with pytest.raises(TypeError, match=r"image 1: expected dtype uint8 .*got float32"):
        det.detect_faces([images[0], images[1].astype(np.float32)])
    with pytest.raises(ValueError, match=f"image '{tmp_path / 'missing.png'}': no such file"):
        det.detect_faces([tmp_path / "missing.png"])


def test_batch_error_survives_pickling(det: afd_trt.Detector, images: list[np.ndarray]) -> None:
    """A BatchError raised in a process-pool worker reaches the parent whole (unpickling it
    failed, which breaks the pool and loses every result)."""
    import pickle

    with pytest.raises(afd_trt.BatchError) as info:
        det.detect_batch([images[0], "no/such/file.png"], boxes=iter([[], []]))  # boxes: any iterable
    back = pickle.loads(pickle.dumps(info.value))
    assert isinstance(back, afd_trt.BatchError)
    assert str(back) == str(info.value)
    assert back.results == [[], None]
    assert set(back.errors) == {1}
    assert "no such file" in str(back.errors[1])


def test_detect_batch_uses_the_stream_and_keeps_results(
    det: afd_trt.Detector, images: list[np.ndarray], singles: list[list[dict[str, np.ndarray]]]
) -> None:
    items: list[object] = [images[0], np.zeros((4, 4), np.float32), images[1]]
    with pytest.raises(afd_trt.BatchError) as info:
        det.detect_batch(items, batch_size=2)  # type: ignore[arg-type]
    assert set(info.value.errors) == {1}
    assert "float32" in str(info.value.errors[1])
    _same(info.value.results[0], singles[0])
    _same(info.value.results[2], singles[1])


def test_stage_timings(det: afd_trt.Detector, images: list[np.ndarray]) -> None:
    det.timings.reset()
    det.timings.enabled = True
    try:
        results = list(det.stream(images, batch_size=2))
    finally:
        det.timings.enabled = False
    seconds, counts = det.timings.seconds(), det.timings.counts()
    faces = sum(len(r.faces or []) for r in results)
    assert faces > 0
    expected = {"decode", "preprocess", "detector", "nms", "warp", "landmarks", "heatmap_decode"}
    assert set(seconds) == expected
    assert all(v > 0 for v in seconds.values())
    assert counts["decode"] == len(images)
    assert counts["detector"] == len(images)  # batch 1 per image on the CPU
    det.timings.reset()
    det(images[0])
    assert det.timings.seconds() == {}, "disabled timings record nothing"


class _OutOfMemoryAbove:
    """Wraps a real engine; raises torch.OutOfMemoryError for batches above ``limit``, as CUDA
    would, and records the batch sizes it ran."""

    def __init__(self, engine: afd_trt.engines.Engine, limit: int) -> None:
        self.engine = engine
        self.limit = limit
        self.batches: list[int] = []

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = int(inputs[0].shape[0])
        if n > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {n}")
        self.batches.append(n)
        return self.engine(*inputs)


def test_out_of_memory_splits_the_batch(
    seeded_weights: Callable[[int], Weights], images: list[np.ndarray]
) -> None:
    w = seeded_weights(0)
    det = afd_trt.Detector("yolov3", w["yolov3"]["pth"], w["hrnetv2"]["pth"], device="cpu", flip_test=False)
    det.batch_images = True  # the GPU's batching path, run on the CPU
    expected = [r.faces for r in det.stream(images, batch_size=4)]
    counts = [len(f or []) for f in expected]
    assert sum(counts) > max(counts), "faces in more than one image"
    limit = max(counts)
    det.landmarks.engine = _OutOfMemoryAbove(det.landmarks.engine, limit)
    got = list(det.stream(images, batch_size=4))
    assert det.oom_splits >= 1
    assert max(det.landmarks.engine.batches) <= limit
    for r, e in zip(got, expected, strict=True):
        assert r.ok, r.error
        assert e is not None
        # Batch composition changes the landmark batch, so compare within fp32 noise.
        assert r.faces is not None
        assert len(r.faces) == len(e)
        for fa, fb in zip(r.faces, e, strict=True):
            np.testing.assert_array_equal(fa["bbox"], fb["bbox"])
            np.testing.assert_allclose(fa["keypoints"], fb["keypoints"], atol=0.05)


def test_out_of_memory_on_one_image_is_that_image_error(
    seeded_weights: Callable[[int], Weights],
    images: list[np.ndarray],
    singles: list[list[dict[str, np.ndarray]]],
) -> None:
    w = seeded_weights(0)
    # The `det` fixture's settings (singles come from it); a detector of its own to patch.
    det = afd_trt.Detector("yolov3", w["yolov3"]["pth"], w["hrnetv2"]["pth"], device="cpu", flip_test=False)
    det.batch_images = True
    counts = [len(faces) for faces in singles]
    det.landmarks.engine = _OutOfMemoryAbove(det.landmarks.engine, max(counts) - 1)
    got: list[StreamResult] = list(det.stream(images, batch_size=4))
    worst = int(np.argmax(counts))
    assert not got[worst].ok
    assert "out of memory" in str(got[worst].error).lower()
    assert all(r.ok for i, r in enumerate(got) if counts[i] < max(counts))


def test_memory_stays_flat_over_10000_images(seeded_weights: Callable[[int], Weights]) -> None:
    """The stream holds a bounded window: 10,000 distinct 64x64 inputs (120 MB if all were kept)
    go through with a traced peak of a few MB. Empty box lists keep the networks out of it."""
    import tracemalloc

    w = seeded_weights(0)
    det = afd_trt.Detector(None, landmark_checkpoint=w["hrnetv2"]["pth"], device="cpu")
    n = 10_000

    def frames() -> Iterator[np.ndarray]:
        for i in range(n):
            yield np.full((64, 64, 3), i % 251, np.uint8)

    tracemalloc.start()
    try:
        done = 0
        for r in det.stream(frames(), boxes=itertools.repeat([]), batch_size=16, workers=2):
            assert r.ok
            assert r.faces == []
            assert r.index == done
            done += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done == n
    assert peak < 8 * 2**20, f"peak traced memory {peak / 2**20:.1f} MiB"


@pytest.mark.needs_cuda
def test_real_cuda_out_of_memory_splits(seeded_weights: Callable[[int], Weights]) -> None:
    """On a real GPU: cap the caching allocator between what one image and what the whole batch
    needs; the batch must split (oom_splits > 0) and still give every image's faces."""
    w = seeded_weights(0)
    det = afd_trt.Detector("yolov3", w["yolov3"]["pth"], w["hrnetv2"]["pth"], device="cuda:0")
    imgs = [tadne_crop(512 * (i % 6), 512 * (i // 6), 512, 512, (640, 640)) for i in range(16)]
    dev = det.device
    gc.collect()  # earlier tests' detectors and CUDA-graph pools
    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved(dev)  # the cap below applies to reserved memory
    torch.cuda.reset_peak_memory_stats(dev)
    det(imgs[0])
    one = torch.cuda.max_memory_allocated(dev) - base
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    expected = det.detect_batch(imgs, batch_size=16)
    full = torch.cuda.max_memory_allocated(dev) - base
    assert full > 2 * one, (one, full)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(dev).total_memory
    torch.cuda.set_per_process_memory_fraction((base + (one + full) / 2) / total, dev)
    try:
        got = det.detect_batch(imgs, batch_size=16)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
    assert det.oom_splits > 0
    for a, b in zip(got, expected, strict=True):
        assert len(a) == len(b)
        for fa, fb in zip(a, b, strict=True):
            np.testing.assert_allclose(fa["bbox"], fb["bbox"], atol=1e-2)


def test_image_streams_are_locked_by_handle() -> None:
    """PyTorch pools CUDA streams, so two threads' image streams may be one: image work locks the
    stream by its handle, whichever Stream object names it."""
    from types import SimpleNamespace

    from afd_trt.detector import _stream_lock

    a, same, other = (SimpleNamespace(cuda_stream=h) for h in (0x7F01, 0x7F01, 0x7F02))
    assert _stream_lock(a) is _stream_lock(same)  # type: ignore[arg-type]
    assert _stream_lock(a) is not _stream_lock(other)  # type: ignore[arg-type]
