"""Static files that ship inside installed Python packages rather than in ``static/``.

plotly.js comes with the plotly package (the version the Python figures are written for);
it is served from there as ``vendor/plotly.min.js`` instead of being copied into the repo
or loaded from a CDN.
"""

from __future__ import annotations

import os
from importlib.resources import files

from django.contrib.staticfiles import utils
from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage

VENDOR_PREFIX = "vendor"
PACKAGE_FILES = {
    # static name (under vendor/) → (package, path inside the package)
    "plotly.min.js": ("plotly", "package_data/plotly.min.js"),
}


class PackageFileFinder(BaseFinder):
    """Finds ``vendor/<name>`` for each file in ``PACKAGE_FILES``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._storages: dict[str, FileSystemStorage] = {}

    def _location(self, name: str) -> str | None:
        package, inner = PACKAGE_FILES[name]
        try:
            path = files(package).joinpath(inner)
        except ModuleNotFoundError:
            return None
        path = os.fspath(path)
        return path if os.path.isfile(path) else None

    def _storage(self, name: str) -> FileSystemStorage | None:
        if name not in self._storages:
            location = self._location(name)
            if location is None:
                return None
            storage = FileSystemStorage(location=os.path.dirname(location))
            storage.prefix = VENDOR_PREFIX
            self._storages[name] = storage
        return self._storages[name]

    def check(self, **kwargs):
        return []

    def find(self, path, find_all=False, **kwargs):
        prefix, _, name = path.replace("\\", "/").partition("/")
        location = self._location(name) if prefix == VENDOR_PREFIX and name in PACKAGE_FILES else None
        if find_all:
            return [location] if location else []
        return location

    def list(self, ignore_patterns):
        for name, (package, inner) in PACKAGE_FILES.items():
            if ignore_patterns and utils.matches_patterns(f"{VENDOR_PREFIX}/{name}", ignore_patterns):
                continue
            storage = self._storage(name)
            if storage is not None:
                yield os.path.basename(inner), storage
