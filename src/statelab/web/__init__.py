"""The HTTP boundary: the FastAPI app, its routes, and the only code that knows HTTP."""
