"""Pagination of every List method (AIP-158): ids sort by creation time, so a page token is the
last id of the previous page, and a page is read one item past its size to know if more follow."""

from collections.abc import Sequence
from typing import Protocol, TypeVar

from magicpixels.core.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


class Identified(Protocol):
    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=Identified)


def page_size(requested: int) -> int:
    """0 means the default; a size above the maximum is lowered to it."""
    if requested < 0:
        raise InvalidArgument(
            "PARAMETER_INVALID", "page_size must not be negative", param="page_size"
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def page(items: Sequence[T], size: int) -> tuple[Sequence[T], str]:
    """The page of `items` (read as `size + 1`) and the next page's token, "" after the last."""
    return items[:size], items[size - 1].id if len(items) > size else ""
