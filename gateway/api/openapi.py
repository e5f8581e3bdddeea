"""The OpenAPI 3.0 document: kept beside the routes, assembled from each route module.

Shared pieces (error body, parameters, the bearer scheme) live here; each route module
returns its own ``paths`` entries so the document lists exactly what the server serves.
"""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}

# Scalar schemas the route modules build their documents from (one definition each, so
# "number" means the same thing in every module and a nullable one says so by name).
STRING: dict[str, Any] = {"type": "string"}
NULLABLE_STRING: dict[str, Any] = {"type": "string", "nullable": True}
NUMBER: dict[str, Any] = {"type": "number"}
NULLABLE_NUMBER: dict[str, Any] = {"type": "number", "nullable": True}
INTEGER: dict[str, Any] = {"type": "integer"}


def error_responses(*codes: int) -> dict[str, Any]:
    """Standard error responses for the given status codes."""
    text = {
        400: "Bad parameter (the body says which and why)",
        401: "Missing or wrong bearer token",
        403: "The token's role is too low for this route (the body names the role needed)",
        404: "Unknown meter",
    }
    return {
        str(c): {"description": text.get(c, "Error"), "content": {"application/json": {"schema": ERROR}}}
        for c in codes
    }


def json_or_csv(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A 200 response available as JSON or (``?format=csv``) CSV."""
    return {
        "200": {
            "description": description,
            "content": {"application/json": {"schema": schema}, "text/csv": {"schema": {"type": "string"}}},
        }
    }


FROM = {
    "name": "from",
    "in": "query",
    "required": False,
    "description": "Start (inclusive), ISO-8601; a date alone is local midnight; no offset means the "
    "gateway's timezone. Default: 24 h before 'to'.",
    "schema": {"type": "string", "format": "date-time"},
}
TO = {
    "name": "to",
    "in": "query",
    "required": False,
    "description": "End (exclusive), ISO-8601. Default: now.",
    "schema": {"type": "string", "format": "date-time"},
}
FORMAT = {
    "name": "format",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["json", "csv"], "default": "json"},
}
METER_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def core_paths() -> dict[str, Any]:
    """health, meters, readings, metrics."""
    reading = {
        "type": "object",
        "required": ["seq", "meter", "slot", "ts", "quality", "points"],
        "properties": {
            "seq": {"type": "integer"},
            "meter": {"type": "string"},
            "slot": {"type": "string"},
            "ts": {"type": "string"},
            "quality": {"type": "string", "enum": ["good", "timeout", "crc_error", "exception", "invalid"]},
            "points": {"type": "object"},
        },
    }
    return {
        "/api/v1/health": {
            "get": {
                "summary": "Up or degraded and the version (no auth); with the bearer token also the store, "
                           "sink and bus states and the outcome of the last reload",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Health",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["status", "version"],
                                    "properties": {
                                        "status": {"type": "string", "enum": ["up", "degraded"]},
                                        "version": {"type": "string"},
                                        "gateway": {"type": "string"},
                                        "store": {"type": "object", "nullable": True},
                                        "sinks": {"type": "array", "items": {"type": "object"}},
                                        "buses": {"type": "array", "items": {"type": "object"}},
                                        "reload": {"type": "object", "nullable": True, "properties": {
                                            "at": {"type": "string"},
                                            "ok": {"type": "boolean"},
                                            "error": {"type": "string", "nullable": True},
                                            "restart_needed": {"type": "array", "items": {"type": "string"}},
                                        }},
                                    },
                                }
                            }
                        },
                    }
                },
            }
        },
        "/api/v1/meters": {
            "get": {
                "summary": "Configured meters with last read, last error and success rate",
                "parameters": [FORMAT],
                "responses": {
                    **json_or_csv(
                        {
                            "type": "object",
                            "required": ["meters"],
                            "properties": {"meters": {"type": "array", "items": {"type": "object"}}},
                        },
                        "Meters",
                    ),
                    **error_responses(400, 401),
                },
            }
        },
        "/api/v1/meters/{id}/readings": {
            "get": {
                "summary": "Raw readings of one meter, by slot",
                "parameters": [
                    METER_ID,
                    FROM,
                    TO,
                    FORMAT,
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100000},
                    },
                    {"name": "schedule", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    **json_or_csv(
                        {
                            "type": "object",
                            "required": ["meter", "readings"],
                            "properties": {
                                "meter": {"type": "string"},
                                "from": {"type": "string"},
                                "to": {"type": "string"},
                                "count": {"type": "integer"},
                                "readings": {"type": "array", "items": reading},
                            },
                        },
                        "Readings",
                    ),
                    **error_responses(400, 401, 404),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **error_responses(401),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.0 document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **error_responses(401),
                },
            }
        },
    }


def build_document(paths: dict[str, Any], version: str) -> dict[str, Any]:
    """The whole OpenAPI document."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "amr-gateway API",
            "version": version,
            "description": "Readings, interval data, settlements, events and KPIs of one gateway.",
        },
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "A token from `amr-gateway token add`; roles: reader (GET), operator (the "
                               "write routes), admin (tokens). The configured api.token counts as admin.",
            }},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                }
            },
        },
    }
