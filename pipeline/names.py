"""Experiment, run and tag names checked before anything is created: a safe pattern and
length for names (they become MLflow names and artifact folders), and user tags that cannot
overwrite gan-pipe's or MLflow's own."""

from __future__ import annotations

import posixpath
import re
import unicodedata
from typing import Annotated

from pydantic import AfterValidator

#: Longest experiment or run name. MLflow allows 500 characters for an experiment, but the
#: name is also a folder (``mlartifacts/<name>``) and file systems stop at 255 bytes.
NAME_MAX = 200
NAME_RULE = (
    f"1 to {NAME_MAX} printable characters (letters of any script, digits, spaces, punctuation), "
    "no / or \\, no control characters, not only dots, no space at either end"
)
#: MLflow's limits on run tags (mlflow/utils/validation.py: MAX_ENTITY_KEY_LENGTH,
#: MAX_TAG_VAL_LENGTH) and its rule for tag keys (validate_param_and_metric_name).
TAG_KEY_MAX = 250
TAG_VALUE_MAX = 8000
_TAG_KEY = re.compile(r"[\w./\- :]+")
#: Tags that MLflow (``mlflow.*``) and gan-pipe (``gan_pipe.*`` and the keys below) set on
#: every run; a user tag must not replace them.
RESERVED_TAG_PREFIXES = ("mlflow.", "gan_pipe.")
RESERVED_TAG_KEYS = ("device", "torch.version", "git.commit")
_TAG_HINTS = {
    "mlflow.runname": "; set the run name with experiment.run_name",
    "mlflow.note.content": "; set the run description with experiment.description",
}


def check_name(v: str) -> str:
    """An experiment or run name that MLflow stores and a folder can carry (:data:`NAME_RULE`)."""
    if not v:
        raise ValueError(f"a name cannot be empty; expected {NAME_RULE}")
    if len(v) > NAME_MAX:
        raise ValueError(f"the name is {len(v)} characters long; at most {NAME_MAX} are allowed")
    sep = [c for c in "/\\" if c in v]
    if sep:
        raise ValueError(
            f"the name contains {sep[0]!r}, a path separator (artifacts would go to another "
            "folder); use - or _ instead"
        )
    odd = next((c for c in v if unicodedata.category(c).startswith("C")), None)
    if odd is not None:
        raise ValueError(
            f"the name contains the control or invisible character U+{ord(odd):04X}; "
            "use printable characters only"
        )
    if set(v) == {"."}:
        raise ValueError("a name of only dots is a folder ('.' or '..'); use letters or digits")
    if v != v.strip():
        raise ValueError("the name starts or ends with white space; remove it")
    return v


def check_tag_key(key: str) -> str:
    low = key.casefold()
    if low.startswith(RESERVED_TAG_PREFIXES) or low in RESERVED_TAG_KEYS:
        raise ValueError(
            f"tags starting with {' or '.join(repr(p) for p in RESERVED_TAG_PREFIXES)} (and "
            f"{', '.join(repr(k) for k in RESERVED_TAG_KEYS)}) are MLflow's and gan-pipe's own, "
            f"set on every run; use another key{_TAG_HINTS.get(low, '')}"
        )
    if len(key) > TAG_KEY_MAX:
        raise ValueError(f"a tag key is at most {TAG_KEY_MAX} characters (this has {len(key)})")
    if not _TAG_KEY.fullmatch(key):
        raise ValueError(
            "a tag key may only contain letters, digits, _ - . / : and spaces (MLflow's rule)"
        )
    norm = posixpath.normpath(key)
    if norm != key or norm == "." or norm.startswith(("..", "/")):
        raise ValueError(f"MLflow refuses tag keys that read as another path ({norm!r})")
    return key


def check_tag_value(value: str) -> str:
    if len(value) > TAG_VALUE_MAX:
        raise ValueError(
            f"a tag value is at most {TAG_VALUE_MAX} characters (this has {len(value)})"
        )
    return value


Name = Annotated[str, AfterValidator(check_name)]
TagKey = Annotated[str, AfterValidator(check_tag_key)]
TagValue = Annotated[str, AfterValidator(check_tag_value)]
