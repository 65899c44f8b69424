"""Write data/MNIST/mnist.npz, the MNIST that ships with vae-pyro, from the four IDX files.

torchvision decodes the IDX files (no hand-written parser); numpy stores the four uint8/int64
arrays compressed, so a run reads MNIST with numpy alone (no torchvision import, no cache).
tests/test_datasets.py checks that the shipped file equals torchvision's decode.

    python experiments/make_mnist_npz.py ../shared/data/MNIST/raw data/MNIST/mnist.npz
"""

import gzip
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from torchvision.datasets.mnist import read_image_file, read_label_file


def decode(raw: Path) -> dict[str, np.ndarray]:
    """The four arrays of an IDX folder (.gz or extracted), as torchvision reads them."""
    names = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, name in names.items():
            path = raw / name
            if not path.is_file():  # torchvision reads extracted files only
                path = Path(tmp) / name
                with gzip.open(raw / f"{name}.gz") as src, open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            read = read_image_file if key.startswith("x") else read_label_file
            arrays[key] = read(str(path)).numpy().astype(np.uint8 if key[0] == "x" else np.int64)
    return arrays


if __name__ == "__main__":
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    np.savez_compressed(target, **decode(source))
    print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MiB)")
