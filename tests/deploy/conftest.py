"""What the deployment tests share: moto's S3 server, reached over real HTTP."""

import pytest

from tests.assets.stores import serve_s3

s3_endpoint = pytest.fixture(scope="session", name="s3_endpoint")(serve_s3)
