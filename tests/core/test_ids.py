import re
import time

from magicpixels.core.ids import new_id


def test_id_has_prefix_and_30_crockford_characters() -> None:
    assert re.fullmatch(r"job_[0-9A-HJKMNP-TV-Z]{30}", new_id("job"))


def test_ids_sort_by_creation_time() -> None:
    earlier = new_id("job")
    time.sleep(0.002)
    assert new_id("job") > earlier


def test_ids_do_not_repeat() -> None:
    assert len({new_id("key") for _ in range(10_000)}) == 10_000
