from dataclasses import dataclass

import pytest

from magicpixels.core.errors import InvalidArgument
from magicpixels.core.paging import page, page_size


@dataclass(frozen=True)
class Item:
    id: str


@pytest.mark.parametrize(("requested", "size"), [(0, 20), (1, 1), (100, 100), (1000, 100)])
def test_page_size_defaults_to_20_and_is_capped_at_100(requested: int, size: int) -> None:
    assert page_size(requested) == size


def test_a_negative_page_size_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        page_size(-1)
    assert (caught.value.reason, caught.value.param) == ("PARAMETER_INVALID", "page_size")


def test_one_item_past_the_size_means_more_follow() -> None:
    items = [Item("c"), Item("b"), Item("a")]
    assert page(items, 2) == ([Item("c"), Item("b")], "b")
    assert page(items[:2], 2) == ([Item("c"), Item("b")], "")
    assert page([], 2) == ([], "")
