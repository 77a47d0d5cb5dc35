"""Lists the packages of the three source folders under the one `magicpixels` namespace.

The metadata lives in pyproject.toml; only the package list needs code, because setuptools'
automatic discovery does not follow a package-dir mapping into nested namespaces.
"""

from setuptools import find_packages, setup


def packages_under(prefix: str, folder: str) -> list[str]:
    return [prefix, *(f"{prefix}.{name}" for name in find_packages(folder))]


setup(
    packages=[
        *packages_under("magicpixels", "src/magicpixels"),
        *packages_under("magicpixels.services", "services"),
        *packages_under("magicpixels.gateway", "gateway"),
        "magicpixels_sdk",
    ]
)
