"""The one checkpoint-reading policy: weights_only loading, clear errors, loud pretrained loading."""
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from mmsparse.utils.checkpoint import load_checkpoint_file


def test_load_checkpoint_file_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'model': {}, 'cfg': OrderedDict(a=Path('.'))}, path)
    with pytest.raises(Exception, match='[Ww]eights only load failed'):
        load_checkpoint_file(str(path))
