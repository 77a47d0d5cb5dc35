"""The list conventions of API.md: `limit` and `starting_after` in, a list object out."""

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Query


@dataclass(frozen=True)
class Page:
    """Which page a list request asks for, as a List RPC's page_size and page_token."""

    limit: int
    starting_after: str

    @property
    def rpc(self) -> dict[str, Any]:
        return {"page_size": self.limit, "page_token": self.starting_after}

    def of(self, data: list[dict[str, Any]]) -> dict[str, Any]:
        """This page of a short list the gateway holds whole (prices, plans), paged as the
        List RPCs page theirs; a cursor that names none of it gives an empty page."""
        start = 0
        if self.starting_after:
            ids = [item["id"] for item in data]
            found = self.starting_after in ids
            start = ids.index(self.starting_after) + 1 if found else len(data)
        shown = data[start : start + self.limit]
        more = start + self.limit < len(data)
        return list_object(shown, shown[-1]["id"] if more else "")


def page(
    limit: Annotated[int, Query(ge=1, le=100, description="items per page (1..100)")] = 20,
    starting_after: Annotated[
        str, Query(max_length=64, description="the last id of the previous page")
    ] = "",
) -> Page:
    """A route dependency: the page a list request asks for."""
    return Page(limit, starting_after)


def list_object(data: list[dict[str, Any]], next_page_token: str) -> dict[str, Any]:
    """Newest first, as the List RPCs answer; `next_cursor` is the next page's `starting_after`."""
    return {
        "object": "list",
        "data": data,
        "has_more": bool(next_page_token),
        "next_cursor": next_page_token or None,
    }
