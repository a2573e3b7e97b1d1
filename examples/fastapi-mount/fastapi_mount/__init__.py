"""tusd-py mounted inside a FastAPI application (see this directory's README)."""
