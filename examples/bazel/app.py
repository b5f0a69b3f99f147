"""Import the torch-like stub through the venv rpathfix built and call into its CUDA libraries."""

import os
import sys

import torchstub

answer = torchstub.cuda_answer()
if not isinstance(answer, int):
    sys.exit(f"rpathfix-example: cuda_answer() returned {answer!r}")
if os.environ.get("LD_LIBRARY_PATH"):
    print(f"rpathfix-example: note: LD_LIBRARY_PATH={os.environ['LD_LIBRARY_PATH']} (not needed)")
print(f"rpathfix-example: python {sys.executable} prefix {sys.prefix}", file=sys.stderr)
print("rpathfix-example: ok")
