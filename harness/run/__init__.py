"""Stage: running cases - in process, in isolated workers, on torch.distributed ranks."""
