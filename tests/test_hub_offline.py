"""A hub id that cannot be downloaded (no network, offline mode) fails with one clear line."""

from __future__ import annotations

import pytest

from glus.errors import GLUSError
from glus.model.checkpoint import from_pretrained


def test_hub_id_offline_is_a_one_line_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(GLUSError) as err:
        from_pretrained("Swindl/GLUS-S")
    message = str(err.value)
    assert "Swindl/GLUS-S" in message and "hub" in message and "\n" not in message


def test_missing_local_folder_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(GLUSError, match="not found"):
        from_pretrained(tmp_path / "no" / "such" / "checkpoint")
