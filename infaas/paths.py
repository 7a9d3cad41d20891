"""Where the shared evaluation data lives: the public Proteus profiles and traces.

They are read in place, never copied into the project (their licence allows use for comparison
only). `INFAAS_PROTEUS_DIR` says where they are; unset, `../shared/data/proteus` beside the project
checkout. A clone with neither has no Proteus data: `proteus_data()` is then None, and whatever
needs the data says so (the tests run on a synthetic stand-in, tests/synthetic_proteus.py).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PROFILES_CSV = "aggregate_profiled.csv"


def proteus_dir() -> Path:
    """Where the Proteus data is looked for (it may not be there: see `proteus_data`)."""
    configured = os.environ.get("INFAAS_PROTEUS_DIR")
    return Path(configured) if configured else PROJECT.parent / "shared" / "data" / "proteus"


def proteus_data() -> Path | None:
    """The Proteus data directory if it holds the profiles, else None."""
    root = proteus_dir()
    return root if (root / PROFILES_CSV).is_file() else None


def proteus(*parts: str) -> Path:
    """A path inside the Proteus data; a clear error when the data is not there."""
    path = proteus_dir().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the Proteus data is expected in ../shared/data/proteus beside "
                                "the project, or where INFAAS_PROTEUS_DIR points")
    return path
