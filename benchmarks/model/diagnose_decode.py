"""Where the compiled decode step's time goes: dynamo recompiles and graph breaks inside generate(), and the
time of one decode step captured by torch.compile(mode="reduce-overhead") outside generate().

    python -m benchmarks.model.diagnose_decode
"""
import time

import torch
from torch._dynamo.utils import counters
from transformers import GenerationConfig
from transformers.generation.configuration_utils import CompileConfig

from hf_lrnn import LRNNCache

from .bench import FULL, build


def main():
    device = torch.device("cuda")
    for name in ("hlru_m2", "bdlru_k4"):
        model = build(name, **FULL["size"], device=device, dtype=FULL["dtype"])
        prompt = torch.randint(0, model.config.vocab_size, (1, 512), device=device)
        torch._dynamo.reset()
        counters.clear()
        config = GenerationConfig(max_new_tokens=64, min_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=0,
                                  compile_config=CompileConfig(fullgraph=True))
        for _ in range(3):
            torch.cuda.synchronize(); t = time.perf_counter()
            model.generate(prompt, generation_config=config)
            torch.cuda.synchronize(); print(name, "generate(64 tokens) s", round(time.perf_counter() - t, 3), flush=True)
        print(name, "dynamo counters", {k: dict(v) for k, v in counters.items() if k in ("stats", "recompiles", "graph_break", "inductor")}, flush=True)

        cache = LRNNCache(model.config, batch_size=1, device=device)
        with torch.no_grad():
            model(input_ids=prompt, cache=cache)
            token = prompt[:, -1:].clone()
            for mode in ("reduce-overhead", "default"):
                torch._dynamo.reset()
                step = torch.compile(lambda t: model(input_ids=t, cache=cache).logits, mode=mode, fullgraph=True)
                for _ in range(5):
                    step(token)
                torch.cuda.synchronize(); t = time.perf_counter()
                for _ in range(100):
                    step(token)
                torch.cuda.synchronize()
                print(name, f"compiled step alone ({mode}) ms", round(10 * (time.perf_counter() - t), 4), flush=True)
            eager = lambda t: model(input_ids=t, cache=cache).logits  # noqa: E731
            eager(token); torch.cuda.synchronize(); t = time.perf_counter()
            for _ in range(50):
                eager(token)
            torch.cuda.synchronize()
            print(name, "eager step ms", round(20 * (time.perf_counter() - t), 4), flush=True)


if __name__ == "__main__":
    main()
