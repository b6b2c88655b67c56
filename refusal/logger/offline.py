"""What an offline W&B run recorded: the records of its ``run-<id>.wandb`` file, as ``wandb sync`` will send them.

The file is W&B's LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of
chunks, each with a 7-byte header (CRC-32 of type byte + data, data length, type: 1 full, 2 first, 3 middle,
4 last); a block's tail shorter than a chunk header is zero padding. Each whole record is a serialized
``wandb_internal.Record``.
"""
from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path
from typing import Iterator

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> Iterator:
    """The ``wandb_internal_pb2.Record`` messages of one ``.wandb`` file, in order (a torn tail is ignored)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, _ = HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, parts = HEADER.size, []
    while pos + CHUNK.size <= len(data):
        if BLOCK - pos % BLOCK < CHUNK.size:
            pos += BLOCK - pos % BLOCK
            continue
        crc, n, kind = CHUNK.unpack_from(data, pos)
        chunk = data[pos + CHUNK.size: pos + CHUNK.size + n]
        if kind not in (FULL, FIRST, MIDDLE, LAST) or len(chunk) < n or \
                zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            return  # the end of what was written
        pos += CHUNK.size + n
        parts = [chunk] if kind in (FULL, FIRST) else parts + [chunk]
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(b"".join(parts))
            yield rec


def run_file(run_dir: str | Path) -> Path:
    """The ``.wandb`` file of an offline run dir (``wandb/offline-run-<time>-<id>``)."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    return path


def finished_records(run_dir: str | Path, timeout: float = 30.0) -> list:
    """The records of an offline run dir once its exit record is on disk: W&B's service may still be writing the
    file after ``wandb.finish()`` returns (wandb 0.31) or the process ended. TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(read_records(run_file(run_dir)))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run_dir}: no exit record after {timeout} s (the run has not finished)")
        time.sleep(0.1)


def artifacts(run_dir: str | Path) -> list[dict]:
    """The artifacts the finished offline run recorded: name, type, digest and ``used`` (recorded to be marked as
    used by the run once synced, :func:`refusal.logger.loggers.use_artifact`) vs logged as its output."""
    return [{"name": r.artifact.name, "type": r.artifact.type, "digest": r.artifact.digest,
             "used": r.artifact.use_after_commit}
            for r in finished_records(run_dir) if r.WhichOneof("record_type") == "artifact"]
