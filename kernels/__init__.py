"""fastconv.kernels: the Numba kernels behind fastconv's operators.

Kernels take contiguous arrays, an output array and plain integers; all checking
and shape math happen before they are called (fastconv.params).
"""
