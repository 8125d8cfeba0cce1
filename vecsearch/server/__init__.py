"""The HTTP service: similarity search over a running index, without paying model start-up per call.

`create_app(index)` returns a FastAPI app; `vecsearch serve` runs it with uvicorn. FastAPI is
an optional extra (`server`; the message when it is missing says the pip line), so nothing here is imported by
`vecsearch` itself.
"""

from .app import create_app
from .params import MAX_K

__all__ = ["create_app", "MAX_K"]
