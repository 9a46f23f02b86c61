"""Shared input builder of the atheris fuzz harnesses (tests/fuzz/fuzz_<op>.py).

Not a pytest module (pytest only collects test_*.py). Each harness turns the fuzzer's bytes into
arguments with :class:`Gen`: mostly well-formed (right dtype, a shape following the op's template
with fuzzed free dimensions) so that the compute paths are reached, with values that range from
small integers (ties, degenerate boxes) to raw garbage bytes (NaN, inf, denormals); and, now and
then, the wrong dtype, ndim or shape, a non-contiguous view, or not an array at all.
:func:`call_op` then accepts a result or ``ValueError`` / ``TypeError`` with a message; anything
else propagates, and atheris reports it (as it does a crash of the native code).

Sizes that are valid but would take gigabytes (e.g. a 32767 x 32767 crop) are kept out: the point
is robustness, not memory exhaustion on purpose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import atheris
import numpy as np

MAX_ELEMS = 4096
DTYPES: list[Any] = [np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8, np.bool_, object]
SPECIAL_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, np.nan, np.inf, -np.inf, 3.0e38, -3.0e38, 1e-45, 1e-30, 65504.0]
BAD_INTS = [0, -1, -7, 2**31 - 1, 2**31, -(2**31), 2**62, -(2**63), 2**63 - 1, 2**70]
GARBAGE: list[object] = [None, "x", b"\x00", 1.5, 3, [], [[]], {}, (1, 2), object()]


class Gen:
    """Arguments from fuzzer bytes (an atheris.FuzzedDataProvider underneath)."""

    def __init__(self, data: bytes) -> None:
        self.fdp = atheris.FuzzedDataProvider(data)
        # Strict inputs (3 in 4): no garbage arguments, so that the compute paths are reached; the
        # data arrays still take any values (raw bytes: NaN, inf, denormals).
        self.strict = self.int(0, 3) != 0

    def int(self, lo: int, hi: int) -> int:
        return int(self.fdp.ConsumeIntInRange(lo, hi))

    def one_in(self, k: int) -> bool:
        return self.int(0, k - 1) == 0

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.int(0, len(seq) - 1)]

    def bool(self) -> bool:
        return bool(self.fdp.ConsumeBool())

    def garbage(self) -> object:
        return self.choice(GARBAGE)

    def size(self, lo: int, hi: int) -> int:
        """A size argument: mostly in [lo, hi], sometimes zero, negative or beyond any range."""
        return self.choice(BAD_INTS) if not self.strict and self.one_in(12) else self.int(lo, hi)

    def float(self, lo: float = -10.0, hi: float = 10.0) -> float:
        """A float argument: mostly in [lo, hi], sometimes special (NaN, inf, huge) or arbitrary."""
        r = self.int(2 if self.strict else 0, 15)
        if r == 0:
            return float(self.choice(SPECIAL_FLOATS))
        if r == 1:
            return float(self.fdp.ConsumeFloat())
        if r < 5:
            return float(self.int(int(lo), int(hi)))
        return float(self.fdp.ConsumeFloatInRange(lo, hi))

    def floats(self, n: int, lo: float = -10.0, hi: float = 10.0) -> list[float]:
        """A list of floats, usually n long."""
        if not self.strict and self.one_in(16):
            n = self.int(0, n + 2)
        return [self.float(lo, hi) for _ in range(n)]

    def dims(self, template: Sequence[int | None]) -> tuple[int, ...]:
        """A shape from a template (None: a free dimension, 0..6, rarely up to 64); rarely mutated
        (a dimension dropped, added or changed)."""
        dims = [self.int(0, 64) if self.one_in(16) else self.int(0, 6) if d is None else d for d in template]
        if not self.strict and self.one_in(20):
            kind = self.int(0, 2)
            if kind == 0 and dims:
                del dims[self.int(0, len(dims) - 1)]
            elif kind == 1:
                dims.insert(self.int(0, len(dims)), self.int(0, 3))
            elif dims:
                dims[self.int(0, len(dims) - 1)] = self.int(0, 6)
        return tuple(dims)

    def values(self, n: int, dtype: Any, lo: float, hi: float, param: bool = False) -> np.ndarray:
        """n values of dtype: raw bytes, small integers, uniform in [lo, hi], or special floats
        (param arrays of strict inputs: uniform only)."""
        mode = 2 if param and self.strict else self.int(0, 4)
        if mode == 0 and dtype is not object:
            item = np.dtype(dtype).itemsize
            raw = self.fdp.ConsumeBytes(n * item)
            raw += b"\x00" * (n * item - len(raw))
            return np.frombuffer(raw, dtype=dtype).copy()
        if mode == 1:
            vals: Any = self.fdp.ConsumeIntListInRange(n, int(min(lo, -4)), int(max(hi, 8)))
        elif mode == 2 or mode == 0:
            vals = self.fdp.ConsumeFloatListInRange(n, lo, hi)
        elif mode == 3:
            vals = [self.choice(SPECIAL_FLOATS) for _ in range(n)]
        else:
            vals = [self.float(lo, hi) for _ in range(n)]
        with np.errstate(all="ignore"):
            if dtype is object:
                return np.array(vals, dtype=object).reshape(n)
            if np.issubdtype(np.dtype(dtype), np.integer) or dtype is np.bool_:
                arr = np.nan_to_num(np.asarray(vals, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
                info = np.iinfo(np.int64)
                return np.clip(arr, info.min // 2, info.max // 2).astype(np.int64).astype(dtype)
            return np.asarray(vals, dtype=np.float64).astype(dtype)

    def array(
        self,
        template: Sequence[int | None],
        dtype: Any = np.float32,
        lo: float = -10.0,
        hi: float = 10.0,
        max_elems: int = MAX_ELEMS,
        param: bool = False,
    ) -> Any:
        """Mostly a C-contiguous dtype array shaped by template; sometimes (not for strict inputs)
        another dtype, a non-contiguous view, or not an array. param: a validated parameter
        (scale factors, anchor sizes) rather than data."""
        r = self.int(5, 39) if self.strict else self.int(0, 39)
        if r == 0:
            return self.garbage()
        dt = self.choice(DTYPES) if r in (1, 2) else dtype
        shape = self.dims(template)
        if int(np.prod(shape, dtype=np.int64)) > max_elems:
            shape = tuple(min(d, 2) for d in shape)
        n = int(np.prod(shape, dtype=np.int64))
        arr = self.values(n, dt, lo, hi, param).reshape(shape)
        if r == 3 and arr.ndim >= 1:  # same shape, not C-contiguous
            arr = np.repeat(arr, 2, axis=-1)[..., ::2]
        if r == 4:
            return arr.tolist()
        return arr


def dim(arr: Any, axis: int, default: int = 2) -> int:
    """arr.shape[axis] where arr is an array with that axis, else default."""
    if isinstance(arr, np.ndarray) and arr.ndim > axis:
        return int(arr.shape[axis])
    return default


def pairs_arg(g: Gen, k: int) -> object:
    """flip_pairs: index pairs in [-1, K] (out of range sometimes), an int array, or garbage."""
    r = g.int(0, 9)
    if r == 0:
        return g.garbage()
    if r == 1:
        return g.array((None, 2), np.int64, lo=-1, hi=k)
    hi = max(k - 1, 0) if g.strict else k
    return [(g.int(-1 if not g.strict and g.one_in(10) else 0, hi), g.int(0, hi)) for _ in range(g.int(0, 4))]


def pool_args(g: Gen, planes: int) -> tuple[int, int]:
    """output_size and sampling_ratio: small, at the bounds, or invalid; large pools only for few planes."""
    output_size = g.choice([1024, 1025]) if g.one_in(40) else g.size(1, 8)
    if output_size == 1024 and planes > 1:
        output_size = 7
    sampling_ratio = g.choice([1024, 1025, 2**40]) if g.one_in(40) else g.int(-2, 4)
    return output_size, sampling_ratio


def call_op(fn: Callable[[], Any], check: Callable[[Any], None] | None = None) -> Any:
    """Run the op: a result (checked by ``check``) or ValueError / TypeError with a message.
    Any other exception propagates: atheris reports it as a finding."""
    try:
        out = fn()
    except (ValueError, TypeError) as err:
        if not str(err).strip():
            raise AssertionError(f"{type(err).__name__} without a message") from err
        return None
    if check is not None:
        check(out)
    return out


def check_dets(max_per_img: int) -> Callable[[Any], None]:
    """A detection result: float32 (K, 5), K <= max_per_img."""

    def check(out: Any) -> None:
        assert isinstance(out, np.ndarray), type(out)
        assert out.dtype == np.float32, out.dtype
        assert out.ndim == 2, out.shape
        assert out.shape[1] == 5, out.shape
        assert out.shape[0] <= max_per_img, (out.shape, max_per_img)

    return check


def check_array(shape: tuple[int, ...], dtype: Any) -> Callable[[Any], None]:
    def check(out: Any) -> None:
        assert isinstance(out, np.ndarray), type(out)
        assert out.dtype == dtype, out.dtype
        assert out.shape == shape, (out.shape, shape)

    return check
