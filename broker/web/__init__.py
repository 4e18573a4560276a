"""The integration engineer's console: FastAPI pages, the JSON API and operations endpoints."""
