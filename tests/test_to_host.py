"""harness.layouts.transfer: host copies of a nested result with one wait for the GPU (to_host), copies to
the GPU without one (to_device, as_device_tensor), bit for bit what .cpu() / .to() give."""
import pytest
import torch

from harness.layouts.transfer import as_device_tensor, to_device, to_host


def _tree(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    return [dict(out=x.to(device), core=x.T.to(device)), (x[:2].to(device, torch.bfloat16), 3, "name")]


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.device.type == "cpu" and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b.cpu()))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_cpu_tree_comes_back_as_it_was():
    tree = _tree("cpu")
    got = to_host(tree)
    assert _same(got, tree)
    assert got[0]["out"] is tree[0]["out"]          # nothing copied on the host


@pytest.mark.gpu
def test_gpu_tree_equals_cpu_copies():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (this machine has none)")
    tree = _tree("cuda")
    got = to_host(tree)
    assert _same(got, tree)
    # the copies are complete when to_host returns: a later write on the GPU does not reach them
    before = got[0]["out"].clone()
    tree[0]["out"].add_(1)
    torch.cuda.synchronize()
    assert torch.equal(got[0]["out"], before)


def test_to_device_and_device_tensors_on_the_cpu():
    x = torch.arange(6.0).reshape(2, 3)
    assert to_device(x, "cpu") is x
    t = as_device_tensor([[0, 2], [1, 3]], torch.int32, "cpu")
    assert t.dtype == torch.int32 and t.tolist() == [[0, 2], [1, 3]]


@pytest.mark.gpu
def test_to_device_without_waiting_gives_the_same_values():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (this machine has none)")
    xs = [torch.randn(64, 33, dtype=torch.float64) for _ in range(50)]
    ys = [to_device(x, "cuda") for x in xs]
    ids = as_device_tensor(list(range(1000)), torch.long, "cuda")
    torch.cuda.synchronize()
    assert all(y.is_cuda and torch.equal(y.cpu(), x) for x, y in zip(xs, ys))
    assert ids.tolist() == list(range(1000))
