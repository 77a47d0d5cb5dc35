"""What the assets tests share: real media (`samples`) and the blob stores (`stores`)."""

import pytest

from tests.assets.samples import Encoder, encode_audio, encode_image, encode_video
from tests.assets.stores import choose_blob_store, serve_s3


@pytest.fixture(name="encode_image")
def encode_image_fixture() -> Encoder:
    return encode_image


@pytest.fixture(name="encode_audio")
def encode_audio_fixture() -> Encoder:
    return encode_audio


@pytest.fixture(name="encode_video")
def encode_video_fixture() -> Encoder:
    return encode_video


s3_endpoint = pytest.fixture(scope="session", name="s3_endpoint")(serve_s3)
blob_store = pytest.fixture(name="blob_store")(choose_blob_store)
