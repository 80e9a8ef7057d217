"""A sound upper bound on a prompt's tokens, counted before the model call.

A step reserves its worst case before it asks the model: the prompt's tokens plus the
output cap. The prompt's tokens must be known *before* the call, and a count that can come
out low would let a step settle more than it reserved. So this module does not estimate:
it bounds.

**The bound: UTF-8 bytes.** Byte-level BPE tokenizers (OpenAI's cl100k/o200k, Llama 3,
Qwen, GPT-2 and most models served by vLLM, Ollama or LiteLLM) cover every byte of the text
with tokens of at least one byte each, and SentencePiece tokenizers with byte fallback
(Llama 2, Mistral) spend at most one token per byte too (plus a dummy-prefix token per
segment, covered by the per-message overhead). So a text of ``n`` UTF-8 bytes is at most
``n`` tokens, whatever the model. What the server adds around the text is bounded by
constants: a chat template's special tokens and role names per message, the rendering of
each tool's schema, a default system preamble. The request is measured as the JSON of the
messages and tools it sends: every string the server renders is in that JSON (escaped,
which only adds bytes), and the JSON's own keys and punctuation add slack on top of the
explicit overheads below.

Why not a tokenizer: ``tiktoken`` downloads its encoding files at first use (these
machines may have no network). ``bpe-openai`` (PyPI 0.1.4) embeds them and installs here,
and it is fast (about 1 ms for 25 KB), but its counts are exact only for OpenAI models, and
another model's tokenizer can need more tokens for the same text (o200k and cl100k differ by
up to 1.75x on emoji; a Llama or Mistral vocabulary is neither): a low count would break
"never overspent". It also adds a 75 MB native library and 0.46 s of import time. The byte
bound costs one ``json.dumps`` of the request and over-reserves about 4x for English
prose (2x for JSON); what a step *settles* is still the reported usage, so the price of
the bound is a reservation that is larger than needed, never a wrong charge.

A reported prompt larger than the bound is clamped to the bound and traced
(``usage_clamped``): the bound is what was reserved, and nothing is settled above it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from runtime.errors import BudgetExhausted

#: tokens a server may add for a request: the assistant reply's priming, a BOS token, a
#: default system preamble some templates insert (Llama 3.1's date lines are ~25 tokens)
REQUEST_OVERHEAD = 64
#: tokens a chat template may add per message beyond its content: start/end markers, the
#: role name, separators, a SentencePiece dummy prefix (ChatML and Llama 3 add 4 to 7)
MESSAGE_OVERHEAD = 8
#: tokens a server may add per tool beyond the JSON of its schema (OpenAI renders tools as
#: a TypeScript-like namespace, shorter than the JSON, plus a small preamble)
TOOL_OVERHEAD = 16
#: the fewest output tokens a model call is made with: a step whose budget holds its prompt
#: but not this much more is refused (``budget_exhausted``) instead of calling for a stub
MIN_OUTPUT_TOKENS = 16
#: the largest prompt a step may reserve; no model reads this much, and it keeps the
#: ledger's arithmetic (prompt tokens x nano-USD per token) exact in a double (< 2**53)
MAX_PROMPT_TOKENS = 10**8


def json_bytes(value: Any) -> int:
    """UTF-8 bytes of ``value`` as compact JSON (non-ASCII text as itself, not escaped)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    # a lone surrogate (from a JSON "\\ud800" in an input) is 3 bytes, as the wire sends it
    return len(text.encode("utf-8", "surrogatepass"))


def prompt_bound(
    messages: Iterable[Mapping[str, Any]], tools: Iterable[Mapping[str, Any]] = ()
) -> int:
    """An upper bound on the prompt tokens of a chat request with ``messages`` and
    ``tools`` (as sent), for any byte-level BPE or byte-fallback tokenizer. Raises
    ``BudgetExhausted(step, tokens)`` beyond ``MAX_PROMPT_TOKENS``: no budget holds it."""
    total = REQUEST_OVERHEAD
    for message in messages:
        total += json_bytes(message) + MESSAGE_OVERHEAD
    for tool in tools:
        total += json_bytes(tool) + TOOL_OVERHEAD
    if total > MAX_PROMPT_TOKENS:
        raise BudgetExhausted("step", "tokens")
    return total


#: nano-USD per token for a price of 1 USD per million tokens
NANO_PER_USD_PER_MTOK = 1000


def nano_per_token(usd_per_mtok: float) -> int:
    """A model price in whole nano-USD per token, rounded up (so a reservation made with it
    is never below what the same usage is charged). 1 USD per Mtok = 1000 nano-USD."""
    # via the shortest decimal repr: 0.3 * 1000 is 300.00000000000006 in binary floats
    scaled = round(usd_per_mtok * NANO_PER_USD_PER_MTOK, 6)
    whole = int(scaled)
    return whole if whole == scaled else whole + 1


def model_cost_micro(input_tokens: int, output_tokens: int, in_nano: int, out_nano: int) -> int:
    """Micro-USD for a model call, rounded up: the ledger's cost of ``input_tokens`` at
    ``in_nano`` plus ``output_tokens`` at ``out_nano`` nano-USD per token."""
    nano = input_tokens * in_nano + output_tokens * out_nano
    return -(-nano // 1000)
