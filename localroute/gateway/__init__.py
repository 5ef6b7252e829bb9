"""The HTTP edge: the Starlette app, its handlers, auth and limits, the OpenAPI document, the dashboard."""
