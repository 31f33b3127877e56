"""A runnable example plugin: a "platform port" backend (docs/backends.md walks through it).

It stores the recurrent state as [K, V] (like an NPU port might) and implements only
some ops; the harness converts the caches to its layout, skips the missing ops at op
level and fills them from the reference at layer level.
"""
from harness import reference as ref
from harness.optimized.api import Backend


class ExamplePortBackend(Backend):
    name = "example-port"
    description = "example plugin: reference math, [K, V] state layout, a subset of ops"
    devices = ("cpu",)
    ssm_state_layout = "kv"

    @staticmethod
    def fused_gdn_gating(A_log, a, b, dt_bias, beta=1.0, threshold=20.0):
        return ref.fused_gdn_gating(A_log, a, b, dt_bias, beta, threshold)

    @staticmethod
    def fused_recurrent_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=True,
                                         cu_seqlens=None, ssm_state_indices=None, num_accepted_tokens=None,
                                         inplace_final_state=False, use_qk_l2norm_in_kernel=False, state_layout="kv",
                                         pad_slot_id=-1):
        # A port would launch its kernel here; the example calls the reference in its own layout.
        return ref.recurrent_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                                              ssm_state_indices, num_accepted_tokens, inplace_final_state,
                                              use_qk_l2norm_in_kernel, state_layout, pad_slot_id)


class TransposedStatePort(ExamplePortBackend):
    """The same port with the NPU incident's bug: it declares [K, V] but its kernel
    reads and writes the pool as [V, K]."""
    name = "example-port-transposed"

    @staticmethod
    def fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=None, **kwargs):
        if initial_state is not None:   # the same bytes, indexed as [V, K]
            n, hv, K, V = initial_state.shape
            initial_state = initial_state.view(n, hv, V, K)
        kwargs["state_layout"] = "vk"
        o, final = ExamplePortBackend.fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=initial_state,
                                                                       **kwargs)
        if final is not None and final.dim() == 4:
            final = final.reshape(final.shape[0], final.shape[1], final.shape[3], final.shape[2])
        return o, final


class AbortingPort(ExamplePortBackend):
    """Kills its process (as a segfault or an illegal memory access would) on spec decode."""
    name = "example-port-aborting"

    @staticmethod
    def fused_recurrent_gated_delta_rule(q, k, v, g, beta, ssm_state_indices=None, **kwargs):
        if ssm_state_indices is not None and ssm_state_indices.dim() == 2:
            import os
            print("example-port: fatal error in spec kernel", file=__import__("sys").stderr, flush=True)
            os.abort()
        return ExamplePortBackend.fused_recurrent_gated_delta_rule(q, k, v, g, beta,
                                                                   ssm_state_indices=ssm_state_indices, **kwargs)


class HangingPort(ExamplePortBackend):
    """Never returns from the gating kernel when it gets a strided input (a hung kernel)."""
    name = "example-port-hanging"

    @staticmethod
    def fused_gdn_gating(A_log, a, b, dt_bias, beta=1.0, threshold=20.0):
        if not a.is_contiguous():
            import time
            time.sleep(3600)
        return ExamplePortBackend.fused_gdn_gating(A_log, a, b, dt_bias, beta, threshold)


_POISONED = []


class PoisoningPort(ExamplePortBackend):
    """Leaves its process's "CUDA context" broken after a spec decode, as an out-of-bounds
    read does: that call and every later one in the process raise the sticky CUDA error."""
    name = "example-port-poisoning"

    @staticmethod
    def fused_recurrent_gated_delta_rule(q, k, v, g, beta, ssm_state_indices=None, **kwargs):
        if ssm_state_indices is not None and ssm_state_indices.dim() == 2:
            _POISONED.append(True)
        if _POISONED:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return ExamplePortBackend.fused_recurrent_gated_delta_rule(q, k, v, g, beta,
                                                                   ssm_state_indices=ssm_state_indices, **kwargs)


def stuck_in_native_code():
    """Block forever inside a C call that no signal ends (as a hung kernel or a compiler
    deadlock does): a default pthread mutex locked twice by its owner. ctypes releases
    the GIL, so the process's other threads still run."""
    import ctypes
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)     # all zeros: PTHREAD_MUTEX_INITIALIZER (glibc)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)


class StuckPort(ExamplePortBackend):
    """Never returns from native code in the gating kernel on a strided input."""
    name = "example-port-stuck"

    @staticmethod
    def fused_gdn_gating(A_log, a, b, dt_bias, beta=1.0, threshold=20.0):
        if not a.is_contiguous():
            stuck_in_native_code()
        return ExamplePortBackend.fused_gdn_gating(A_log, a, b, dt_bias, beta, threshold)


class TwiceInterruptedPort(ExamplePortBackend):
    """Waits in its gating kernel on a strided input while SIGINT comes twice, 50 ms apart, as
    `timeout -s INT` sends it (to the process, then to its process group): the second
    arrives while the first one's report is being written."""
    name = "example-port-twice-interrupted"

    @staticmethod
    def fused_gdn_gating(A_log, a, b, dt_bias, beta=1.0, threshold=20.0):
        if not a.is_contiguous():
            import os
            import signal
            import threading
            import time

            def twice():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGINT)
            threading.Thread(target=twice).start()
            time.sleep(3600)
        return ExamplePortBackend.fused_gdn_gating(A_log, a, b, dt_bias, beta, threshold)
