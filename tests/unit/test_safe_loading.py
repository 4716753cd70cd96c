"""Files read back from a run directory never run code, whatever the environment says."""

import os

import pytest
import torch

from bearrec.errors import BearrecError
from bearrec.preference import reference_log_probs


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_reference_file_is_refused_with_one_line(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    path = tmp_path / "reference_logps.pt"
    torch.save({"key": "x", "values": _Payload(marker)}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's default would be unsafe with it
    with pytest.raises(BearrecError) as exc:
        reference_log_probs(None, [], None, path, {"k": 1})
    assert not marker.exists()
    assert str(path) in str(exc.value) and "refused" in str(exc.value) and "\n" not in str(exc.value)
