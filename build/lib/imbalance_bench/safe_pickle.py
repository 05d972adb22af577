"""The globals a pickled NumPy array needs, and no others: all that the restricted readers of pickled
files (CIFAR's pickles, checkpoints written before RNG states were stored as tensors) admit, so that
a crafted file cannot make them call anything else."""

from __future__ import annotations

import numpy as np

#: NumPy's array-rebuilding functions, taken from an array because NumPy 1 keeps them in numpy.core
#: and NumPy 2 in numpy._core: _reconstruct (pickle protocols 0-4) and _frombuffer (protocol 5)
_reconstruct = np.zeros(1, dtype=np.uint8).__reduce_ex__(2)[0]
_frombuffer = np.zeros(1, dtype=np.uint8).__reduce_ex__(5)[0]

#: dotted name in a pickle -> the object it stands for, under the names NumPy 1 and NumPy 2 write
NUMPY_ARRAY_GLOBALS = {
    "numpy.core.multiarray._reconstruct": _reconstruct,
    "numpy._core.multiarray._reconstruct": _reconstruct,
    "numpy.core.numeric._frombuffer": _frombuffer,
    "numpy._core.numeric._frombuffer": _frombuffer,
    "numpy.ndarray": np.ndarray,
    "numpy.dtype": np.dtype,
}
