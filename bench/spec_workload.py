"""Prompts for the speculative-decoding benchmark (``python -m bench.speculation``).

Two kinds of work, as the issue asks: *repetitive* work, whose answer repeats its input (rewrite a
code file with one change; quote a passage), where prompt-lookup drafts should be confirmed most
of the time, and the usual *chat* work (write a story), where they mostly are not and speculation
must cost nothing. Every request starts with a nonce (see :mod:`bench.workload`) so no server
answers from a cached prefix, and the same nonces go to every subject.
"""

from __future__ import annotations

from bench.workload import nonce, stream_messages

__all__ = ["WORKLOADS", "messages_for", "CODE_FILE", "PASSAGE"]

#: ~300 tokens of Python (SmolLM2's tokenizer) for the rewrite task.
CODE_FILE = '''import struct
from dataclasses import dataclass


@dataclass
class Header:
    magic: bytes
    version: int
    flags: int
    length: int


def parse_header(data: bytes) -> Header:
    """Read the fixed 12-byte header at the start of a record."""
    if len(data) < 12:
        raise ValueError("record too short for a header")
    magic, version, flags, length = struct.unpack(">4sHHI", data[:12])
    if magic != b"REC1":
        raise ValueError(f"bad magic {magic!r}")
    return Header(magic, version, flags, length)


def parse_records(data: bytes) -> list[bytes]:
    """Split a buffer into the payloads of its records."""
    records = []
    offset = 0
    while offset < len(data):
        header = parse_header(data[offset:])
        start = offset + 12
        end = start + header.length
        if end > len(data):
            raise ValueError("record runs past the end of the buffer")
        records.append(data[start:end])
        offset = end
    return records


def total_length(data: bytes) -> int:
    """The sum of the payload lengths of all records."""
    return sum(len(record) for record in parse_records(data))
'''

#: A passage to quote from (~300 tokens).
PASSAGE = (
    "The harbour at Westmere was built in three stages. The first pier, of timber, went up in "
    "1821 and served the fishing fleet for almost forty years. In 1860 the town council replaced "
    "it with a stone breakwater, which sheltered the inner basin from the winter storms that came "
    "in from the north-east.\n\n"
    "The second stage brought the railway. A branch line reached the quay in 1874, and within a "
    "decade the harbour shipped more coal than fish. Warehouses of red brick lined the western "
    "side of the basin, and a swing bridge carried the tracks over the channel to the new coaling "
    "berths.\n\n"
    "The third stage was a deep-water berth, dredged in 1912 so that steamers could load at any "
    "tide. It was the harbour's busiest time: in the summer of 1913 more than two hundred ships "
    "called at Westmere. The war that followed closed the coal trade, and the harbour never "
    "regained its old traffic.\n\n"
    "Today the warehouses hold a museum, a market and a sailing school. The swing bridge still "
    "opens twice a day, and the stone breakwater, repaired after the great storm of 1953, still "
    "shelters the boats in the inner basin."
)

WORKLOADS = ("code", "quote", "chat")


def messages_for(workload: str, *key: object) -> list[dict]:
    """The chat messages of one request of ``workload``; ``key`` makes its nonce."""
    if workload == "chat":
        return stream_messages("spec", *key)
    tag = nonce("spec", workload, *key)
    system = {"role": "system", "content": f"Session {tag}. You are a careful assistant."}
    if workload == "code":
        # (SmolLM2-135M answers this phrasing with the file; "repeat the following file…" first
        # gets an explanation instead)
        task = ("```python\n" + CODE_FILE + "```\n\nRename `parse_header` to `read_header` in this "
                "file and show the whole file.")
    elif workload == "quote":
        task = PASSAGE + "\n\nQuote the third and fourth paragraphs of the text above exactly."
    else:
        raise ValueError(f"unknown workload {workload!r}")
    return [system, {"role": "user", "content": task}]
