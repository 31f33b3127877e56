"""Model-level spot checks: transformers Qwen3-Next / Qwen3.5 models with every GDN layer
run through a harness backend (`hf_model`), an lm-eval model class (`lm_eval_model`) and
the offline GSM8K command (`gsm8k`)."""
from __future__ import annotations

import os

from ..optimized.interpret import interpret_triton

# Nothing here may touch the network: set before datasets / transformers / lm-eval import.
OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_EVALUATE_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1",
               "HF_UPDATE_DOWNLOAD_COUNTS": "0"}


def set_offline() -> None:
    os.environ.update(OFFLINE_ENV)


set_offline()
interpret_triton()      # no GPU: before anything (transformers -> fla) imports triton
