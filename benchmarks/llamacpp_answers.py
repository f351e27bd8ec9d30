"""Wall time of the main job's answers on local/smollm2: flowyard against llama-cpp-python.

The main job (``examples/python-docs-qa``) answers eight questions, each with one
``llm.chat`` call on a RAG prompt of about 700 tokens (``answer.yaml``: system prompt, three
reference passages, the question; ``max_tokens`` 160, temperature 0.2, seed 7), fanned out
with ``max_parallel: 2``. This script replays those calls on prompts built the same way from
the Python Language Reference topics (``pydoc_data.topics``, the documents the main job
indexes; no vector store needed) and measures the wall time of all eight answers:

- ``direct, one at a time``: llama-cpp-python's ``Llama.create_completion`` with the same
  sampling, prompt evaluated afresh for every call (the baseline: what the model allows with
  one context, llama-cpp-python's default threads);
- ``flowyard, pool 1, 2 at once``: the ``local`` provider with one context (two calls at a
  time, so one waits);
- ``flowyard, pool 2, 2 at once``: two contexts, each lent its share of the cores (the
  default of the built-in ``smollm2`` alias).

Each round runs every side once in a shuffled order; printed are the median wall time,
prompt and output tokens per second of wall time and the ratio against the baseline. The
sides must produce the same answers (checked): thread counts and pools do not change what a
seeded call generates.

Usage::

    .venv/bin/python benchmarks/llamacpp_answers.py [--rounds 3] [--questions 8]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Awaitable, Callable

import anyio
from flowyard.models import ChatRequest, Message
from flowyard_llamacpp import engine
from flowyard_llamacpp.provider import LlamaCppProvider
from flowyard_llamacpp.spec import ModelSpec, smollm2_path

#: (question, topics whose text is the reference passages), as the main job's retriever
#: finds them.
QUESTIONS = [
    ('What does the "global" statement do?', ["global", "naming", "execmodel"]),
    ('How does a "with" statement use a context manager?',
     ["with", "context-managers", "specialnames"]),
    ('What happens when a "break" statement runs inside a "try" with a "finally" clause?',
     ["try", "break", "compound"]),
    ("How are default argument values evaluated in a function definition?",
     ["function", "calls", "lambda"]),
    ('What does the "yield" expression do in a function?', ["yieldexpr", "yield", "function"]),
    ('How does the "assert" statement behave when Python runs with -O?',
     ["assert", "debugger", "exceptions"]),
    ('What is the difference between "is" and "==" in comparisons?',
     ["comparisons", "objects", "customization"]),
    ('How does a "for" statement iterate over a sequence?', ["for", "typesseq", "in"]),
]
SYSTEM = ("You answer questions about the Python language using only the reference passages "
          "given. Answer in two or three sentences.\n")
#: Characters of passages per prompt: about 700 tokens with the question, as in the main job.
PASSAGE_CHARS = 2700
MAX_TOKENS, STOP, TEMPERATURE, SEED = 160, ["\n\n", "Question:"], 0.2, 7


def prompts(count: int) -> list[tuple[str, str]]:
    """(system, user) message texts of the first ``count`` questions."""
    from pydoc_data.topics import topics

    out = []
    for question, names in QUESTIONS[:count]:
        share = PASSAGE_CHARS // len(names)
        passages = "\n\n".join(topics.get(name, name)[:share] for name in names)
        out.append((SYSTEM, f"Reference passages:\n{passages}\n\nQuestion: {question}\n"
                            "Answer:\n"))
    return out


async def flowyard_side(pool: int, messages: list[tuple[str, str]]
                        ) -> tuple[float, list[str], int, int]:
    """Answer every prompt through the provider, two at a time; (seconds, texts, in, out)."""
    engine.unload_models()
    provider = LlamaCppProvider({"smollm2": ModelSpec("smollm2", smollm2_path(),
                                                      pool_size=pool)})
    await provider.chat(ChatRequest(model="smollm2", messages=[Message.user("hi")],
                                    max_tokens=2, seed=1))  # load and warm up
    texts = [""] * len(messages)
    tokens = [0, 0]
    limiter = anyio.CapacityLimiter(2)

    async def one(i: int) -> None:
        system, user = messages[i]
        async with limiter:
            response = await provider.chat(ChatRequest(
                model="smollm2", messages=[Message.system(system), Message.user(user)],
                max_tokens=MAX_TOKENS, stop=STOP, temperature=TEMPERATURE, seed=SEED))
        texts[i] = response.text
        tokens[0] += response.usage.input_tokens
        tokens[1] += response.usage.output_tokens

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(len(messages)):
            tg.start_soon(one, i)
    elapsed = time.perf_counter() - started
    await provider.aclose()
    engine.unload_models()
    return elapsed, texts, tokens[0], tokens[1]


def direct_side(messages: list[tuple[str, str]]) -> tuple[float, list[str], int, int]:
    """Answer every prompt with llama-cpp-python directly, one at a time."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(smollm2_path()), n_ctx=4096, verbose=False)
    formatter = engine.LoadedModel.format_chat
    model = engine.get_model(ModelSpec("smollm2", smollm2_path()))
    rendered = [formatter(model, [{"role": "system", "content": s},
                                  {"role": "user", "content": u}]) for s, u in messages]
    engine.unload_models()
    llm.create_completion("hi", max_tokens=2)  # warm up
    texts, tokens_in, tokens_out = [], 0, 0
    started = time.perf_counter()
    for prompt in rendered:
        llm.reset()  # every prompt evaluated afresh, as each question brings its own context
        out = llm.create_completion(prompt, max_tokens=MAX_TOKENS, stop=STOP,
                                    temperature=TEMPERATURE, top_k=40, top_p=0.95,
                                    min_p=0.05, repeat_penalty=1.0, seed=SEED)
        texts.append(out["choices"][0]["text"])
        tokens_in += out["usage"]["prompt_tokens"]
        tokens_out += out["usage"]["completion_tokens"]
    elapsed = time.perf_counter() - started
    llm.close()
    return elapsed, texts, tokens_in, tokens_out


async def main(rounds: int, count: int) -> None:
    # every side gets flowyard's OpenMP wait policy, read once when llama.cpp loads
    engine.import_llama_cpp()
    messages = prompts(count)
    sides: list[tuple[str, Callable[[], Awaitable[tuple[float, list[str], int, int]]]]] = [
        ("direct, one at a time", lambda: anyio.to_thread.run_sync(direct_side, messages)),
        ("flowyard, pool 1, 2 at once", lambda: flowyard_side(1, messages)),
        ("flowyard, pool 2, 2 at once", lambda: flowyard_side(2, messages)),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in sides}
    results: dict[str, tuple[list[str], int, int]] = {}
    order = random.Random(0)
    for _ in range(rounds):
        order.shuffle(sides)
        for name, side in sides:
            elapsed, texts, tokens_in, tokens_out = await side()
            times[name].append(elapsed)
            results[name] = (texts, tokens_in, tokens_out)
    base_name = "direct, one at a time"
    flowyard_texts = results["flowyard, pool 1, 2 at once"][0]
    if results["flowyard, pool 2, 2 at once"][0] != flowyard_texts:
        raise SystemExit("the pool of 2 answered differently from the pool of 1")
    same = sum(a == b for a, b in zip(results[base_name][0], flowyard_texts, strict=True))
    _, tokens_in, tokens_out = results[base_name]
    print(f"{count} main-job answers on local/smollm2 ({tokens_in} prompt and {tokens_out} "
          f"output tokens per side), {rounds} rounds in shuffled order; flowyard's answers "
          f"equal the direct ones for {same}/{count} questions:")
    base = statistics.median(times[base_name])
    for name, values in times.items():
        wall = statistics.median(values)
        _, t_in, t_out = results[name]
        print(f"  {name:28s} median {wall:6.2f}s  (runs {', '.join(f'{v:.1f}' for v in values)})"
              f"  {t_in / wall:6.1f} prompt + {t_out / wall:5.1f} output tok/s"
              f"  ratio vs direct {base / wall:5.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per side")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS),
                        help="questions answered per run")
    args = parser.parse_args()
    anyio.run(main, args.rounds, min(args.questions, len(QUESTIONS)))
