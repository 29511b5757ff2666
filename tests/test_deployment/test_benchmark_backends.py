"""benchmark.py --backend: every backend runs the same network (outputs equal) and is timed interleaved."""
import pytest
import torch

import onnxruntime  # noqa: E402,F401  (a dependency of the project: missing, the tests fail)
from mmsparse.benchmark.measure import inference_runners, time_backends  # noqa: E402


def test_backends_compute_the_same_and_are_timed(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.GELU()).eval()
    x = torch.randn(2, 3, 16, 16)
    runners = inference_runners(module, x, ['pytorch', 'onnxruntime'], onnx_dir=str(tmp_path))
    with torch.no_grad():
        eager = runners['pytorch']()[0]
    ort = torch.from_numpy(runners['onnxruntime']()[0])
    assert ((ort - eager).abs().max() / eager.abs().max()).item() < 1e-5
    times = time_backends(runners, warmup=1, repeats=2)
    assert set(times) == {'pytorch', 'onnxruntime'} and all(len(t) == 2 and min(t) > 0 for t in times.values())


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match='backend must be one of'):
        inference_runners(torch.nn.Identity(), torch.zeros(1, 3, 8, 8), ['tensorrt'])
