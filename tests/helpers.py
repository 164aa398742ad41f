"""Shared by the test files: the micro generator preset and a bounded wait."""

import time

# A generator small enough to train and sample in seconds on a CPU (preset overrides).
TINY = {
    "image_size": 16,
    "id_dim": 32,
    "block_out_channels": (8, 16),
    "attention_levels": (1,),
    "attention_heads": 2,
    "cross_attention_dim": 16,
    "pooled_dim": 16,
    "sim_dim": 8,
    "encoder_hidden_dim": 32,
}


def wait_for(predicate, timeout: float, what: str, poll: float = 0.1):
    """The first truthy value of `predicate()`, or an AssertionError after `timeout` seconds."""
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
