"""The contract between agent and centre: pure code, no I/O.

Records (``records``), their canonical bytes (``canonical``), the per-agent hash chain
(``chain``), signed batches (``batch``), wire messages and versions (``wire``) and the
error codes (``errors``). Both ``agent`` and ``central`` import this package and never
each other.
"""

from .batch import Batch, BatchLimits, KeyPair, decode_batch, encode_batch, sign_batch, verify_batch
from .canonical import Limits, decode_canonical, encode_canonical
from .chain import (
    GENESIS,
    Entry,
    LinkedRecord,
    decode_body,
    decode_entry,
    encode_body,
    encode_entry,
    record_hash,
    verify_chain,
)
from .errors import (
    BadSignature,
    BatchRefused,
    ChainBroken,
    DecodeError,
    EncodingError,
    LimitExceeded,
    ProtocolError,
    ValidationFailed,
    error_body,
)
from .records import (
    CardLog,
    FeeDetail,
    Person,
    Reversal,
    Settlement,
    Visit,
    check_card_log,
    check_reversal,
    check_settlement,
)

__all__ = [
    "GENESIS",
    "BadSignature",
    "Batch",
    "BatchLimits",
    "BatchRefused",
    "CardLog",
    "ChainBroken",
    "DecodeError",
    "EncodingError",
    "Entry",
    "FeeDetail",
    "KeyPair",
    "LimitExceeded",
    "Limits",
    "LinkedRecord",
    "Person",
    "ProtocolError",
    "Reversal",
    "Settlement",
    "ValidationFailed",
    "Visit",
    "check_card_log",
    "check_reversal",
    "check_settlement",
    "decode_batch",
    "decode_body",
    "decode_canonical",
    "decode_entry",
    "encode_batch",
    "encode_body",
    "encode_canonical",
    "encode_entry",
    "error_body",
    "record_hash",
    "sign_batch",
    "verify_batch",
    "verify_chain",
]
