from __future__ import annotations

import datetime as dt
import re

import pytest

from quantflow.storage.artifacts import ArtifactStore
from quantflow.storage.filesystem import Store


def test_artifact_names_follow_prefix_timestamp_ext(tmp_path):
    store = ArtifactStore(Store(str(tmp_path)))
    when = dt.datetime(2024, 5, 6, 7, 8, 9)
    url = store.put("ml_engine_", "json", b"{}", when=when)
    assert url.endswith("/ml_engine_20240506_070809.json")
    # a second artifact in the same second never overwrites the first
    url2 = store.put("ml_engine_", "json", b"[]", when=when)
    assert url2.endswith("/ml_engine_20240506_070810.json")
    assert store.get(url) == b"{}" and store.get(url2) == b"[]"
    assert store.latest("ml_engine_") == url2
    assert re.search(r"data_extractor_\d{8}_\d{6}\.csv$", store.put("data_extractor_", "csv", b"a\n"))


def test_unknown_prefix_and_bad_extension(tmp_path):
    store = ArtifactStore(Store(str(tmp_path)))
    with pytest.raises(ValueError, match="unknown artifact prefix"):
        store.put("model_", "pkl", b"")
    with pytest.raises(ValueError, match="extension"):
        store.put("plot_", "../png", b"")
