"""Writing instructions: the canonical `Instruction` row and the loaders that produce it."""

from tasks.instructions.loaders import (
    LOADERS,
    InstructionDataError,
    RowProblem,
    load_instructions,
    source_fingerprint,
)
from tasks.instructions.schema import Criterion, Instruction, instructions_from_arrow, instructions_to_arrow

__all__ = [
    "LOADERS",
    "Criterion",
    "Instruction",
    "InstructionDataError",
    "RowProblem",
    "instructions_from_arrow",
    "instructions_to_arrow",
    "load_instructions",
    "source_fingerprint",
]
