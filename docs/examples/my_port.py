"""A one-file backend for gdn-harness: a platform port that brings its own gating kernel
and takes every other op from a built-in backend. Run it as it is:

    gdn-harness run --suite smoke --backend docs/examples/my_port.py:MyPortBackend

(tests/test_plugins.py does). Copy it, point the ops at your kernels, and keep the
adapters to argument plumbing: a behaviour "fixed up" here is one the harness cannot see.
"""
import torch

from harness.optimized.reference_backend import ReferenceBackend


def my_gdn_gating(A_log, a, b, dt_bias, beta=1.0, threshold=20.0):
    """The port's kernel (plain torch here, in fp32 as a kernel computes):
    g = -exp(A_log) * softplus(a + dt_bias), beta = sigmoid(b), both fp32 [..., HV]."""
    x = a.float() + dt_bias.float()
    g = -torch.exp(A_log.float()) * torch.nn.functional.softplus(x, beta=beta, threshold=threshold)
    return g, torch.sigmoid(b.float())


class MyPortBackend(ReferenceBackend):
    """Subclassing a built-in backend inherits its ops and declarations; each op you define
    replaces one. To test one kernel against everything else being right, subclass
    `reference` (any device, exact); to drop one kernel into a fast path, subclass `triton`
    (harness.optimized.triton_backend.TritonBackend) or `fla` the same way."""
    name = "my-port"
    description = "example: reference ops with the port's own fused_gdn_gating"
    devices = ("cpu", "cuda")
    fused_gdn_gating = staticmethod(my_gdn_gating)


class MyPortWithoutPackedDecode(MyPortBackend):
    """A port that lacks an op: `None` removes it (skipped at op level, filled from the
    reference at layer level, and the report says so), and the decode path built on it
    goes from `decode_paths`."""
    name = "my-port-no-packed"
    fused_recurrent_gated_delta_rule_packed_decode = None
    decode_paths = ("recurrent", "sigmoid_gating")
