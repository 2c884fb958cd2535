"""Seeing and checking a model: multiply-adds, a layer-by-layer summary, verification."""

from cnnzoo.analysis.flops import MacCount, count_macs, profile_macs
from cnnzoo.analysis.summary import ModelSummary, SummaryRow, summary
from cnnzoo.analysis.verify import VerifyRow, verify, verify_table

__all__ = [
    "MacCount",
    "ModelSummary",
    "SummaryRow",
    "VerifyRow",
    "count_macs",
    "profile_macs",
    "summary",
    "verify",
    "verify_table",
]
