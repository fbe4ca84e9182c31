"""diagnose.py: one engine, the same workload fed two ways -> where a throughput gap comes from.

`generate`: LLM.generate (what the raw baseline does). `toolkit`: LLMEngine.add_request/step with
FINAL_ONLY, detokenize off (`toolkit-detok`: on), all requests admitted at once (what engines/vllm/engine.py does
when the KV cache holds the task). Running both on one engine separates the feeding loop from the settings.

    python -m benchmarks.diagnose --model DIR --ids ids-1000x256.json --engine-args '{...}' --out d.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--ids", required=True)
    p.add_argument("--engine-args", default="{}")
    p.add_argument("--loops", default="generate,toolkit")
    p.add_argument("--ladder-to", type=int, default=0, help="capture the toolkit's CUDA-graph ladder up to N")
    p.add_argument("--label", default="")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    engine_args = json.loads(args.engine_args)
    if args.ladder_to:
        from launcher.engines.vllm.sizing import graph_sizes

        engine_args["compilation_config"] = {"cudagraph_capture_sizes": graph_sizes(args.ladder_to)}
    t0 = time.perf_counter()
    llm = LLM(model=args.model, tokenizer=args.model, load_format="dummy", seed=0, **engine_args)
    init_s = time.perf_counter() - t0
    work = json.loads(Path(args.ids).read_text())
    shape, records = work["shape"], work["records"]

    def params(seed: int, loop: str) -> Any:
        extra: dict[str, Any] = {}
        if loop.startswith("toolkit"):
            extra = {"detokenize": loop != "toolkit", "output_kind": RequestOutputKind.FINAL_ONLY}
        return SamplingParams(
            n=shape["n"],
            temperature=1.0,
            top_p=0.9,
            top_k=50,
            max_tokens=shape["max_tokens"],
            seed=seed,
            ignore_eos=True,
            **extra,
        )

    rows = []
    for loop in args.loops.split(","):
        t0 = time.perf_counter()
        if loop == "generate":
            outs = llm.generate(
                [TokensPrompt(prompt_token_ids=r["prompt_token_ids"]) for r in records],
                [params(r["seed"], loop) for r in records],
                use_tqdm=False,
            )
            samples = sum(len(o.outputs) for o in outs)
        else:
            engine = llm.llm_engine
            for i, r in enumerate(records):
                engine.add_request(f"r{i}", {"prompt_token_ids": r["prompt_token_ids"]}, params(r["seed"], loop))
            samples, first = 0, None
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished:
                        first = first or time.perf_counter() - t0
                        samples += len(out.outputs)  # type: ignore[arg-type]
        seconds = time.perf_counter() - t0
        rows.append(
            {
                "loop": loop,
                "samples": samples,
                "seconds": round(seconds, 3),
                "samples_per_min": round(samples / seconds * 60, 1),
            }
        )
        print(f"[diagnose] {args.label} {loop}: {rows[-1]}", flush=True)
    Path(args.out).write_text(
        json.dumps({"label": args.label, "engine_args": engine_args, "init_s": init_s, "rows": rows}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
