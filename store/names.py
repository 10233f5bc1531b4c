"""Model names with Ollama's grammar, defaults and validity rules.

A name is ``[host/][namespace/]model[:tag]``. Clients and existing stores already depend on the
exact rules (which characters each part may hold, the part lengths, how the shortest display form
drops default parts), so they are reproduced here rather than "improved": a name Ollama accepts
must be accepted, and one it rejects must be rejected, or a shared ``~/.ollama/models`` would
show different models depending on which server reads it.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import attrs

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_NAMESPACE",
    "DEFAULT_TAG",
    "MISSING",
    "InvalidName",
    "ModelName",
]

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

#: Stands for a part the text promised with a separator but left empty (``"a/"``, ``"m:"``).
#: It can never pass validation, which is the point: ``"m:"`` must not quietly become ``m:latest``.
MISSING = "!MISSING!"

_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_MAX_LEN = {"host": 350, "namespace": 80, "model": 80, "tag": 80}


class InvalidName(ValueError):
    """The text does not name a model: a part is empty, too long, or has a forbidden character."""

    def __init__(self, text: str) -> None:
        super().__init__(f"invalid model name: {text!r}")
        self.text = text


def _part_is_valid(kind: str, part: str) -> bool:
    if not 1 <= len(part.encode("utf-8")) <= _MAX_LEN[kind]:
        return False
    if part[0] not in _WORD:
        return False
    for ch in part[1:]:
        if ch in _WORD or ch in "-_":
            continue
        if ch == "." and kind != "namespace":
            continue
        if ch == ":" and kind == "host":
            continue
        return False
    return True


def _cut_last(text: str, sep: str) -> tuple[str, str, bool]:
    """Split at the last ``sep``; an empty side of a present separator becomes ``MISSING``."""
    index = text.rfind(sep)
    if index < 0:
        return text, "", False
    before, after = text[:index], text[index + len(sep):]
    return before or MISSING, after or MISSING, True


@attrs.frozen
class ModelName:
    """A fully defaulted model name; construct it with :meth:`parse`."""

    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = attrs.field(default="https", eq=False, repr=False)

    @classmethod
    def parse_lenient(cls, text: str) -> "ModelName":
        """Parse without validating: the result may hold ``MISSING`` or bad characters."""
        host = namespace = tag = ""
        scheme = ""
        rest = text
        # A tag is only split off when its colon comes after the last slash: a colon before a
        # slash belongs to a host with a port (``localhost:5000/m``).
        if rest.rfind(":") > rest.rfind("/"):
            rest, tag, _ = _cut_last(rest, ":")
        rest, model, promised = _cut_last(rest, "/")
        if not promised:
            model = rest
        else:
            rest, namespace, promised = _cut_last(rest, "/")
            if not promised:
                namespace = rest
            else:
                if "://" in rest:
                    scheme, host = rest.split("://", 1)
                else:
                    host = rest
        return cls(
            host=host or DEFAULT_HOST,
            namespace=namespace or DEFAULT_NAMESPACE,
            model=model,
            tag=tag or DEFAULT_TAG,
            scheme=scheme or "https",
        )

    @classmethod
    def parse(cls, text: str) -> "ModelName":
        """Parse and validate ``text``; raise :class:`InvalidName` when Ollama would refuse it."""
        name = cls.parse_lenient(text)
        if not name.is_valid:
            raise InvalidName(text)
        return name

    @classmethod
    def from_relpath(cls, relpath: str | PurePosixPath) -> "ModelName | None":
        """The name a manifest file stands for, given its path below ``manifests/``."""
        parts = PurePosixPath(relpath).parts
        if len(parts) != 4:
            return None
        name = cls(host=parts[0], namespace=parts[1], model=parts[2], tag=parts[3])
        return name if name.is_valid else None

    @property
    def is_valid(self) -> bool:
        return all(
            _part_is_valid(kind, value)
            for kind, value in (("host", self.host), ("namespace", self.namespace),
                                ("model", self.model), ("tag", self.tag))
        )

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    @property
    def display(self) -> str:
        """Ollama's ``DisplayShortest``: drop the default host (and namespace), keep the tag."""
        if self.host.lower() != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        else:
            prefix = ""
        return f"{prefix}{self.model}:{self.tag}"

    @property
    def full(self) -> str:
        """Every part spelled out: ``host/namespace/model:tag``."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def manifest_relpath(self) -> PurePosixPath:
        """Where the manifest lives below ``manifests/``: one directory level per part."""
        if not self.is_valid:
            raise InvalidName(self.full)
        return PurePosixPath(self.host, self.namespace, self.model, self.tag)

    def equal_fold(self, other: "ModelName") -> bool:
        """Same model regardless of letter case, which is how Ollama looks names up."""
        return tuple(p.lower() for p in self.parts) == tuple(p.lower() for p in other.parts)

    def __str__(self) -> str:
        return self.full
