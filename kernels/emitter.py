"""LLVM IR for the kernels' intrinsics (fastconv.kernels.blocked, .rows): vectors
of the width Numba compiles for, their loads and stores, broadcasts, fused
multiply-adds, lane sums and transpositions, emitted inside one intrinsic's call.
"""

import numpy as np
from llvmlite import ir
from numba.core import cgutils, codegen, config


def _vector_bytes():
    """The width of the vectors Numba compiles for: 64 bytes with AVX-512 (32
    registers), else 32 (AVX2's 16 registers; wider vectors would be split in two)."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else codegen.get_host_cpu_features()
    return 64 if "+avx512f" in features.split(",") else 32


VECTOR_BYTES = _vector_bytes()


class Emitter:
    """LLVM IR for one intrinsic's call: vectors of VECTOR_BYTES of the arrays' dtype,
    their loads and stores (any alignment: cells start anywhere), broadcasts and
    fused multiply-adds."""

    def __init__(self, context, builder, signature, args):
        self.context, self.builder = context, builder
        dtype = np.dtype(str(signature.args[0].dtype))
        self.dtype = dtype
        self.lanes = VECTOR_BYTES // dtype.itemsize
        self.align = dtype.itemsize
        self.vector = ir.VectorType(context.get_value_type(signature.args[0].dtype), self.lanes)
        self._suffix = "f32" if dtype == np.float32 else "f64"
        name = f"llvm.fma.v{self.lanes}{self._suffix}"
        self.fma_function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(self.vector, [self.vector] * 3), name)
        self.index = ir.IntType(64)

    def data(self, arraytype, array):
        return self.context.make_array(arraytype)(self.context, self.builder, array).data

    def constant(self, value):
        return ir.Constant(self.index, value)

    def at(self, base, step, count):
        """base + step * i for i < count."""
        return [self.builder.add(base, self.builder.mul(step, self.constant(i))) for i in range(count)]

    def load(self, data, at):
        pointer = self.builder.bitcast(self.builder.gep(data, [at]), self.vector.as_pointer())
        return self.builder.load(pointer, align=self.align)

    def store(self, value, data, at):
        pointer = self.builder.bitcast(self.builder.gep(data, [at]), self.vector.as_pointer())
        self.builder.store(value, pointer, align=self.align)

    def broadcast(self, data, at):
        b = self.builder
        one = b.insert_element(ir.Constant(self.vector, ir.Undefined), b.load(b.gep(data, [at])), ir.Constant(ir.IntType(32), 0))
        return b.shuffle_vector(one, ir.Constant(self.vector, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), self.lanes), [0] * self.lanes))

    def lane_sums(self, values):
        """Vectors whose lanes hold the lane sums of `values` in order (lanes of them
        a vector, the last one's lanes past them undefined): pairs of vectors folded
        into one of half-length sums (two shuffles and an add) until one vector
        remains, then that one folded onto itself; 2 + 2/lanes shuffles a sum where
        adding each vector's halves pairwise took 2 log2(lanes) (on port 5, beside
        the multiply-adds)."""
        b, lanes, sums = self.builder, self.lanes, []
        mask = ir.VectorType(ir.IntType(32), lanes)
        for first in range(0, len(values), lanes):
            vectors = list(values[first : first + lanes])
            while len(vectors) & (len(vectors) - 1):
                vectors.append(ir.Constant(self.vector, [0.0] * lanes))
            group = lanes
            while group > 1:
                half = group // 2
                # the first and second halves of each group, of u's groups then v's
                low = [base + g + c for base in (0, lanes) for g in range(0, lanes, group) for c in range(half)]
                high = [i + half for i in low]
                if len(vectors) == 1:
                    vectors = vectors * 2
                vectors = [b.fadd(b.shuffle_vector(u, v, ir.Constant(mask, low)), b.shuffle_vector(u, v, ir.Constant(mask, high))) for u, v in zip(vectors[::2], vectors[1::2])]
                group = half
            sums.append(vectors[0])
        return sums

    def add_lanes(self, data, at, value, first, count):
        """data[at + l - first] += value's lane l, for first <= l < first + count."""
        bits = self.constant(((1 << count) - 1) << first)
        at = self.builder.sub(at, self.constant(first))
        self.masked_store(self.builder.fadd(self.masked_load(data, at, bits), value), data, at, bits)

    def accumulators(self, data, starts):
        """One register (an entry-block alloca, which LLVM promotes) per start, loaded
        from data there."""
        slots = [cgutils.alloca_once(self.builder, self.vector) for _ in starts]
        for slot, at in zip(slots, starts):
            self.builder.store(self.load(data, at), slot)
        return slots

    def fma(self, a, b, slot):
        self.builder.store(self.builder.call(self.fma_function, [a, b, self.builder.load(slot)]), slot)

    def lanes_between(self, start, end):
        """The lane mask (a vector of i1) of the lanes l with 0 <= start + l < end,
        start and end int64: one unsigned comparison of 32-bit lanes."""
        b, kind = self.builder, ir.VectorType(ir.IntType(32), self.lanes)

        def splat(value):
            one = b.insert_element(ir.Constant(kind, ir.Undefined), b.trunc(value, ir.IntType(32)), ir.Constant(ir.IntType(32), 0))
            return b.shuffle_vector(one, ir.Constant(kind, ir.Undefined), ir.Constant(kind, [0] * self.lanes))

        return b.icmp_unsigned("<", b.add(splat(start), ir.Constant(kind, list(range(self.lanes)))), splat(end))

    def _lane_mask(self, mask):
        """mask as a vector of i1: an integer's bits, or a lane mask as it is."""
        if isinstance(mask.type, ir.VectorType):
            return mask
        return self.builder.bitcast(self.builder.trunc(mask, ir.IntType(self.lanes)), ir.VectorType(ir.IntType(1), self.lanes))

    def masked_store(self, value, data, at, mask):
        """The lanes of value whose bits are set in the integer mask (or that a lane
        mask holds), stored at data[at + lane]; the others not touched. (The
        intrinsic's name with typed pointers: LLVM's with opaque ones upgrades it.)"""
        b, kind = self.builder, ir.VectorType(ir.IntType(1), self.lanes)
        name = f"llvm.masked.store.v{self.lanes}{self._suffix}.p0v{self.lanes}{self._suffix}"
        function = cgutils.get_or_insert_function(b.module, ir.FunctionType(ir.VoidType(), [self.vector, self.vector.as_pointer(), ir.IntType(32), kind]), name)
        pointer = b.bitcast(b.gep(data, [at]), self.vector.as_pointer())
        b.call(function, [value, pointer, ir.Constant(ir.IntType(32), self.align), self._lane_mask(mask)])

    def masked_load(self, data, at, mask):
        """The lanes of data[at + lane] whose bits are set in the integer mask (or
        that a lane mask holds), zeros in the others (none of their memory read)."""
        b, kind = self.builder, ir.VectorType(ir.IntType(1), self.lanes)
        name = f"llvm.masked.load.v{self.lanes}{self._suffix}.p0v{self.lanes}{self._suffix}"
        function = cgutils.get_or_insert_function(b.module, ir.FunctionType(self.vector, [self.vector.as_pointer(), ir.IntType(32), kind, self.vector]), name)
        pointer = b.bitcast(b.gep(data, [at]), self.vector.as_pointer())
        zeros = ir.Constant(self.vector, [0.0] * self.lanes)
        return b.call(function, [pointer, ir.Constant(ir.IntType(32), self.align), self._lane_mask(mask), zeros])

    def transposed(self, rows):
        """The columns of the square of vectors `rows` (lanes of them): log2(lanes)
        rounds of two-vector shuffles, each swapping one bit of the row index with
        the same bit of the lane index."""
        b, lanes, rows = self.builder, self.lanes, list(rows)
        bit = 1
        while bit < lanes:
            for i in range(lanes):
                if i & bit:
                    continue
                j = i | bit
                low = [c if not c & bit else lanes + c - bit for c in range(lanes)]
                high = [c + bit if not c & bit else lanes + c for c in range(lanes)]
                mask = ir.VectorType(ir.IntType(32), lanes)
                rows[i], rows[j] = b.shuffle_vector(rows[i], rows[j], ir.Constant(mask, low)), b.shuffle_vector(rows[i], rows[j], ir.Constant(mask, high))
            bit *= 2
        return rows

    def store_all(self, slots, data, starts):
        for slot, at in zip(slots, starts):
            self.store(self.builder.load(slot), data, at)
