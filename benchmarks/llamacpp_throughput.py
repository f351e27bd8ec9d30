"""Tokens per second of local/smollm2 through flowyard against llama-cpp-python called directly.

All sides use the same GGUF file, the same load settings, the same rendered chat prompt and
greedy decoding (temperature 0), so they generate the same tokens; the script checks that.
Each round runs every side once, in a shuffled order, to spread machine noise evenly; the
figures are the median and the best of ``--rounds`` runs per side, printed as ratios against
two direct baselines measured in the same run (target: >= 0.95):
``Llama.create_completion`` (the documented high-level call) and ``Llama.generate`` (the raw
token generator flowyard itself drives, i.e. the ceiling).

Usage::

    .venv/bin/python benchmarks/llamacpp_throughput.py [--tokens 128] [--rounds 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import anyio
from flowyard.models import ChatRequest, Message
from flowyard.stack import Stack
from flowyard_llamacpp import engine
from flowyard_llamacpp.provider import LlamaCppProvider

PROMPT = "Write a detailed story about a lighthouse keeper and a storm."


def direct_run(llm, prompt: str, max_tokens: int) -> tuple[str, int, float]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, top_k=40,
                                top_p=0.95, min_p=0.05, repeat_penalty=1.0, seed=0)
    elapsed = time.perf_counter() - started
    return out["choices"][0]["text"], out["usage"]["completion_tokens"], elapsed


def raw_generate_run(llm, prompt: str, max_tokens: int) -> tuple[str, int, float]:  # type: ignore[no-untyped-def]
    """The lowest-overhead direct use: llama-cpp-python's token generator, no text handling
    beyond one final detokenize."""
    from llama_cpp import llama_cpp as ll

    started = time.perf_counter()
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    llm.set_seed(0)
    out: list[int] = []
    for token in llm.generate(tokens, top_k=40, top_p=0.95, min_p=0.05, temp=0.0,
                              repeat_penalty=1.0):
        if ll.llama_vocab_is_eog(llm._model.vocab, token):
            break
        out.append(token)
        if len(out) >= max_tokens:
            break
    text = llm.detokenize(out).decode("utf-8", errors="replace")
    return text, len(out), time.perf_counter() - started


async def main(tokens: int, rounds: int) -> None:
    from llama_cpp import Llama

    stack = Stack(discover=True, config={"storage": {"url": "memory://"}})
    provider: LlamaCppProvider = stack.providers.get("local")  # type: ignore[assignment]
    spec = provider.spec("smollm2")
    model = await provider.load("smollm2")
    direct = Llama(model_path=str(spec.path), n_ctx=model.n_ctx, n_batch=spec.n_batch,
                   verbose=False)
    prompt = model.format_chat([{"role": "user", "content": PROMPT}])
    request = ChatRequest(model="smollm2", messages=[Message.user(PROMPT)], max_tokens=tokens,
                          temperature=0.0, seed=0)

    async def via_chat() -> tuple[str, int, float]:
        started = time.perf_counter()
        response = await stack.llm.chat([Message.user(PROMPT)], model="local/smollm2",
                                        max_tokens=tokens, temperature=0.0, seed=0)
        return response.text, response.usage.output_tokens, time.perf_counter() - started

    async def via_stream() -> tuple[str, int, float]:
        started = time.perf_counter()
        parts: list[str] = []
        count = 0
        async for chunk in stack.llm.stream([Message.user(PROMPT)], model="local/smollm2",
                                            max_tokens=tokens, temperature=0.0, seed=0):
            parts.append(chunk.delta)
            if chunk.done and chunk.usage:
                count = chunk.usage.output_tokens
        return "".join(parts), count, time.perf_counter() - started

    # warm-up of both sides (first decode allocates buffers)
    direct_run(direct, prompt, 8)
    await provider.chat(request)

    rates: dict[str, list[float]] = {"direct": [], "direct generate": [], "flowyard chat": [],
                                     "flowyard stream": []}
    texts: dict[str, str] = {}
    counts: dict[str, int] = {}
    async def via_direct() -> tuple[str, int, float]:
        return await anyio.to_thread.run_sync(direct_run, direct, prompt, tokens)

    async def via_raw() -> tuple[str, int, float]:
        return await anyio.to_thread.run_sync(raw_generate_run, direct, prompt, tokens)

    sides = [("direct", via_direct), ("direct generate", via_raw),
             ("flowyard chat", via_chat), ("flowyard stream", via_stream)]
    order = random.Random(0)
    for _ in range(rounds):
        order.shuffle(sides)  # no side always runs first or last in a round
        for name, fn in sides:
            text, count, elapsed = await fn()
            rates[name].append(count / elapsed)
            texts[name], counts[name] = text, count
    for name in ("direct generate", "flowyard chat", "flowyard stream"):
        if texts[name] != texts["direct"] or counts[name] != counts["direct"]:
            raise SystemExit(f"{name} generated different tokens than the direct call "
                             f"({counts[name]} vs {counts['direct']})")
    print(f"local/smollm2, greedy, {counts['direct']} output tokens per run, {rounds} rounds in "
          "shuffled order, tokens/second (prompt processing included on every side):")
    print("  baselines: 'direct' = Llama.create_completion, 'direct generate' = Llama.generate")
    for label, summarise in (("median", statistics.median), ("best", max)):
        base = summarise(rates["direct"])
        raw = summarise(rates["direct generate"])
        print(f"  {label}:")
        for name, values in rates.items():
            value = summarise(values)
            print(f"    {name:16s} {value:8.1f} tok/s   ratio vs direct {value / base:5.3f}   "
                  f"vs direct generate {value / raw:5.3f}")
    await stack.aclose()
    engine.unload_models()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128, help="output tokens per run")
    parser.add_argument("--rounds", type=int, default=5, help="runs per side")
    args = parser.parse_args()
    anyio.run(main, args.tokens, args.rounds)
