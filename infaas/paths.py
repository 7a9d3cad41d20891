"""Where the shared evaluation data lives: the public Proteus profiles and traces.

They are read in place, never copied into the project (their licence allows use for comparison
only). The default is `../shared/data/proteus` beside the project checkout; `INFAAS_PROTEUS_DIR`
points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def proteus_dir() -> Path:
    configured = os.environ.get("INFAAS_PROTEUS_DIR")
    return Path(configured) if configured else PROJECT.parent / "shared" / "data" / "proteus"


def proteus(*parts: str) -> Path:
    """A path inside the Proteus data; a clear error when the data is not there."""
    path = proteus_dir().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the Proteus data is expected in ../shared/data/proteus beside "
                                "the project, or where INFAAS_PROTEUS_DIR points")
    return path
