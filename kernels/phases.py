"""Polyphase layout of zero-padded planes, shared by the direct convolution and the
pooling kernels.

Output cell (y, x) and kernel tap (i, j) read padded cell (y*sh + i*dh, x*sw + j*dw).
Split the padded plane by row phase a and column phase b,
phases[a, b, Y, X] = padded[Y*sh + a, X*sw + b], each (hq, wq); that cell is then
phase ((i*dh) % sh, (j*dw) % sw) at (y + (i*dh)//sh, x + (j*dw)//sw). Laying the
output out in rows of wq ("wide"), output q = y*wq + x reads the flat phase array at
q + tap_start(i, j): every tap is one contiguous run over a whole plane, whatever the
stride. The wq - ow extra columns per row are computed and dropped. At stride 1 the
one phase is the padded plane itself.
"""

from ._jit import serial


@serial
def padded_extent(h, w, pt, pl, oh, ow, kh, kw, sh, sw, dh, dw):
    """(Hp, Wp) of a zero-padded plane holding the input at (pt, pl) and every window."""
    return max(h + pt, (oh - 1) * sh + (kh - 1) * dh + 1), max(w + pl, (ow - 1) * sw + (kw - 1) * dw + 1)


@serial
def tap_start(i, j, sh, sw, dh, dw, hq, wq):
    """Flat index, in the phases of one plane (sh*sw*hq*wq), of the cell tap (i, j)
    reads for the first output."""
    return (((i * dh % sh) * sw + j * dw % sw) * hq + i * dh // sh) * wq + j * dw // sw
