"""Where the package's data lives: `conf/` and `schemas/`, in a checkout or an installed wheel."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_dir(name: str) -> Path:
    """The folder `name` (`conf` or `schemas`) shipped with the package.

    A built wheel carries it inside the package (`pipeline/conf`, mapped from the repo's
    top-level folder by pyproject's `package-dir`), found with importlib.resources; a source
    checkout (editable install, or the repo on sys.path) keeps it beside the package.
    """
    packaged = resources.files("pipeline") / name
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"krea-sweep's {name}/ folder is missing from {packaged}")


CONF_DIR = data_dir("conf")
SCHEMA_DIR = data_dir("schemas")
