"""Tokenizing long texts in time linear in their length, with exactly llama.cpp's tokens.

llama.cpp tokenizes a text in two passes: it first cuts the text at its special tokens (for each
special token, longest first, it searches every remaining raw fragment), then runs the
vocabulary's algorithm on each raw fragment, and each raw fragment costs a fixed 20-60 µs of its
own (BPE pre-tokenizers compile their regular expressions per call). A long chat prompt has two
raw fragments per message, so a 10,000-message conversation (470 KB) took 6 s with SmolLM2's
17 special tokens and 23 s with Gemma 3's 6,414, growing faster than the text (issue 24), while
the runner's message reader waited.

:class:`FastTokenizer` does the first pass itself, in one scan of a regular expression built
from the special tokens as a trie (leftmost-longest: at each place the longest special token that
starts there), and asks llama.cpp only for the raw fragments, without special-token parsing.
Chat templates repeat the same fragments (``"\\n"``, ``"assistant\\n"``), and chat truncation
tokenizes overlapping candidates of one conversation, so fragments are remembered (a bounded
LRU) and each distinct one is tokenized once.

Why the tokens are exactly llama.cpp's: llama.cpp runs the vocabulary's algorithm on each raw
fragment independently (SentencePiece's space prefix depends only on whether a special token came
before, which for a raw fragment is always so), special tokens become their ids, and BOS/EOS are
added around the whole. The one place where "longest special token first, everywhere" and
"leftmost-longest" can disagree is two special tokens whose texts overlap (the end of one is the
start of another); a vocabulary with such tokens, or with left/right-stripping special tokens,
keeps llama.cpp's own path for texts that contain them. The tests compare both paths token for
token.
"""

from __future__ import annotations

import array
import collections
import re
import threading
from typing import Callable, Iterator

import llama_cpp as L

__all__ = ["FastTokenizer", "NotFast", "MIN_FAST_BYTES"]

#: Below this many bytes llama.cpp's own path is cheap enough (a few milliseconds) to keep.
MIN_FAST_BYTES = 4096
#: Bytes of fragment text remembered (their tokens take about as much again), and the longest
#: fragment worth remembering.
MEMO_BYTES = 4 << 20
MEMO_MAX_FRAGMENT = 64 << 10

_SPECIAL = L.LLAMA_TOKEN_ATTR_CONTROL | L.LLAMA_TOKEN_ATTR_USER_DEFINED | L.LLAMA_TOKEN_ATTR_UNKNOWN
_STRIP = L.LLAMA_TOKEN_ATTR_LSTRIP | L.LLAMA_TOKEN_ATTR_RSTRIP


def _trie_pattern(words: list[bytes]) -> bytes:
    """A regular expression matching the longest of ``words`` that starts at a position.

    Built as a trie, so that at each position the engine follows one branch per byte instead of
    trying thousands of alternatives in turn; a word that is a prefix of another is an optional
    tail, tried longest first.
    """
    trie: dict = {}
    for word in words:
        node = trie
        for byte in word:
            node = node.setdefault(byte, {})
        node[None] = True

    def emit(node: dict) -> bytes:
        branches = [re.escape(bytes([byte])) + emit(child) for byte, child in sorted(
            (k, v) for k, v in node.items() if k is not None)]
        if not branches:
            return b""
        body = branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"
        if None in node:  # a word ends here: the longer ones are optional
            return (body + b"?") if len(branches) == 1 and len(branches[0]) == 1 else b"(?:" + body + b")?"
        return body

    return emit(trie)


def _overlapping(words: dict[bytes, int]) -> set[bytes]:
    """Special tokens whose text overlaps another's (an end of one is the start of the other),
    except where both orders of matching agree: the left one is the longer, or both are runs of
    the same byte."""
    starts: dict[bytes, list[bytes]] = collections.defaultdict(list)
    for word in words:
        for k in range(1, len(word)):
            starts[word[:k]].append(word)
    risky: set[bytes] = set()
    for left in words:
        for k in range(1, len(left)):
            for right in starts.get(left[k:], ()):
                if right == left or len(left) > len(right) or _same_run(left, right):
                    continue
                risky.update((left, right))
    return risky


def _same_run(a: bytes, b: bytes) -> bool:
    """Both are runs of one and the same byte (Gemma's ``"\n\n"``, ``"\n\n\n"``…): inside a
    run both orders of matching take the longest run token from the left, so they agree."""
    return len(set(a)) == 1 and set(a) == set(b)


class FastTokenizer:
    """Special-token splitting in Python, raw fragments through llama.cpp, memoised.

    ``vocab`` is the ``llama_vocab`` pointer; ``n_vocab`` its size. Built once per model, lazily
    (reading every token's attributes takes ~0.2 s for a 262k vocabulary). Thread-safe.
    """

    def __init__(self, vocab, n_vocab: int) -> None:
        self.vocab = vocab
        specials: dict[bytes, int] = {}
        strips = False
        for token in range(n_vocab):
            attr = int(L.llama_vocab_get_attr(vocab, token))
            if not attr & _SPECIAL:
                continue
            text = L.llama_vocab_get_text(vocab, token) or b""
            if text and text not in specials:
                specials[text] = token
                strips = strips or bool(attr & _STRIP)
        self._ids = specials
        self._risky = _overlapping(specials)
        #: Stripping tokens change the text around them: kept exact by not taking this path.
        self.usable = not strips
        ordered = sorted(specials, key=len, reverse=True)
        self._pattern = re.compile(_trie_pattern(ordered)) if ordered else None
        self._memo: collections.OrderedDict[bytes, array.array] = collections.OrderedDict()
        self._memo_bytes = 0
        self._lock = threading.Lock()
        self._around: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self._around_ok = False

    # ------------------------------------------------------------------ pieces
    def _pieces(self, data: bytes) -> Iterator[bytes | int]:
        """The raw fragments (bytes) and special token ids (int) of ``data``, in order, found as
        they are consumed (a bounded count stops early). Raises :class:`NotFast` on reaching a
        special token whose text overlaps another's."""
        if self._pattern is None:
            if data:
                yield data
            return
        ids, risky = self._ids, self._risky
        at = 0
        for m in self._pattern.finditer(data):
            token = m.group()
            if token in risky:
                raise NotFast
            start = m.start()
            if start > at:
                yield data[at:start]
            yield ids[token]
            at = m.end()
        if at < len(data):
            yield data[at:]

    def _raw(self, fragment: bytes) -> array.array:
        """llama.cpp's tokens of a fragment that holds no special token (no BOS/EOS added)."""
        memo = self._memo
        with self._lock:
            hit = memo.get(fragment)
            if hit is not None:
                memo.move_to_end(fragment)
                return hit
        cap = len(fragment) + 8
        while True:
            buf = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, fragment, len(fragment), buf, cap, False, False)
            if n >= 0:
                break
            cap = -n
        tokens = array.array("i", buf[:n])  # 4 bytes a token, not a Python int each
        if len(fragment) <= MEMO_MAX_FRAGMENT:
            with self._lock:
                if fragment not in memo:
                    memo[fragment] = tokens
                    self._memo_bytes += len(fragment)
                    while self._memo_bytes > MEMO_BYTES:
                        old, _ = memo.popitem(last=False)
                        self._memo_bytes -= len(old)
        return tokens

    def _envelope(self, llama_tokenize: Callable[[bytes, bool], list[int]]) -> tuple[list[int], list[int]] | None:
        """The tokens ``add_special`` puts before and after a text (BOS, EOS, CLS/SEP…), learnt
        once by tokenizing a short word both ways with llama.cpp itself; ``None`` if they are not
        simply around the text."""
        if self._around is None:
            bare = llama_tokenize(b"word", False)
            full = llama_tokenize(b"word", True)
            found = next((i for i in range(len(full) - len(bare) + 1) if full[i:i + len(bare)] == bare), None)
            self._around = ((), ()) if found is None else (tuple(full[:found]), tuple(full[found + len(bare):]))
            self._around_ok = found is not None
        return (list(self._around[0]), list(self._around[1])) if self._around_ok else None

    # ------------------------------------------------------------------ tokenize
    def tokenize(self, data: bytes, *, add_special: bool, limit: int | None,
                 llama_tokenize: Callable[[bytes, bool], list[int]]) -> list[int] | None:
        """llama.cpp's tokens of ``data`` (special tokens parsed), or ``None`` as soon as there
        are more than ``limit``. Raises :class:`NotFast` when only llama.cpp's own path is exact
        for this text; ``llama_tokenize(data, add_special)`` is that path (used here to learn
        what ``add_special`` adds)."""
        if not self.usable:
            raise NotFast
        pieces = self._pieces(data)
        head: list[int] = []
        tail: list[int] = []
        if add_special:
            envelope = self._envelope(llama_tokenize)
            if envelope is None:
                raise NotFast
            head, tail = envelope
        out = head
        for piece in pieces:
            if type(piece) is int:
                out.append(piece)
            else:
                out.extend(self._raw(piece))
            if limit is not None and len(out) + len(tail) > limit:
                return None
        out.extend(tail)
        return out


class NotFast(Exception):
    """Only llama.cpp's own path gives the exact tokens of this text."""
