"""pytest-benchmark suite over fastconv.catalogue (the same cases as
`python -m fastconv bench`). Run with: pytest bench/ --benchmark-only"""

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # see fastconv/__init__.py: spinning OpenBLAS threads

from fastconv import catalogue  # noqa: E402

# PyTorch before fastconv's threads start (see fastconv.torch)
catalogue.torch_module()
